"""What a sweep shows: accuracy against a setting beside the Bayes limit, the logit's efficiency as an llr,
the data of every cell, and tables."""

from __future__ import annotations

import io
import itertools
import textwrap
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import imsave
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from binclf.llr import INFORMATIVE_LLR
from binclf.monitoring.plotting import to_image
from binclf.safe_io import atomic_write
from binclf.study.plan import value_name


def _ordered(values: list[Any]) -> list[Any]:
    return sorted(set(values), key=lambda v: (isinstance(v, str), v))


def _short(key: str) -> str:
    return key.split(".")[-1]


def _group(rows: list[dict[str, Any]], x_key: str, line_key: str | None, metric: str) -> dict:
    """``{line value: {x value: [metric over seeds]}}`` for the runs that finished."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["status"] == "ok" and metric in row:
            groups[row.get(line_key) if line_key else None][row[x_key]].append(float(row[metric]))
    return groups


def _name(value: Any) -> str:
    """A grid value for titles and tables: whole numbers with thousands separators (10,000)."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value_name(value)


def accuracy_against_setting(
    lines: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    gaps: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    bayes: tuple[np.ndarray, np.ndarray] | None,
    analytic: tuple[np.ndarray, np.ndarray] | None,
    *,
    xlabel: str,
    title: str,
    log_x: bool = True,
    categories: list[str] | None = None,
) -> Figure:
    """Test accuracy against a setting, and below it the gap to the Bayes rule on the same test points.

    ``lines[label] = (x, mean, spread)`` are drawn with error bars beside the Bayes rule measured on the
    same test points and its analytic value, each ``(x, accuracy)``; ``gaps`` has the same form, in
    percentage points. Lines that coincide on the accuracy scale part on the gap's; each line is also
    shifted a little sideways, so that none hides another. With ``categories``, x is the position of each
    named setting (0, 1, ...). Data without an oracle has no gaps: then accuracy alone is drawn.
    """
    if gaps:
        figure = Figure(figsize=(6.4, 6.6))
        top = figure.add_axes((0.12, 0.42, 0.85, 0.52))
        bottom = figure.add_axes((0.12, 0.08, 0.85, 0.26), sharex=top)
        bottom.set_ylabel("Bayes rule − network (pp)")
        bottom.axhline(0, color="black", linewidth=1)
        top.tick_params(labelbottom=False)
    else:
        figure = Figure(figsize=(6.4, 4.8))
        top = bottom = figure.add_axes((0.12, 0.12, 0.85, 0.8))
    top.set_title(title, fontsize=10)
    top.set_ylabel("test accuracy")
    bottom.set_xlabel(xlabel)

    def shifted(x: np.ndarray, i: int) -> np.ndarray:
        offset = 0.04 * (i - (len(lines) - 1) / 2)
        return x * (1 + offset) if log_x else x + offset

    for i, (label, (x, mean, spread)) in enumerate(lines.items()):
        top.errorbar(shifted(x, i), mean, yerr=spread, marker="o", markersize=4, capsize=3, label=label)
    for i, (x, mean, spread) in enumerate(gaps.values()):
        bottom.errorbar(shifted(x, i), mean, yerr=spread, marker="o", markersize=4, capsize=3)
    if analytic is not None:
        top.plot(*analytic, color="black", linewidth=1, label="Bayes limit (analytic)")
    if bayes is not None:
        top.plot(
            *bayes, color="black", linestyle="none", marker="x", label="Bayes rule on the same test points"
        )
    for axes in {top, bottom}:
        axes.grid(alpha=0.3)
    if log_x:
        bottom.set_xscale("log")
    if categories is not None:
        bottom.set_xticks(range(len(categories)), categories)
    if top.get_legend_handles_labels()[0]:
        top.legend(fontsize=8)
    return figure


def accuracy_figure(rows: list[dict[str, Any]], x_key: str, line_key: str | None, seeds: int) -> Figure:
    every_x = _ordered([row[x_key] for row in rows])
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in every_x)
    # Numbers are drawn where they lie; anything else (optimizer names, say) at even steps, labelled.
    position = {x: (float(x) if numeric else float(i)) for i, x in enumerate(every_x)}

    def positions(xs: list[Any]) -> np.ndarray:
        return np.array([position[x] for x in xs])

    def per_line(metric: str, scale: float = 1.0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        result = {}
        for line_value, cells in sorted(_group(rows, x_key, line_key, metric).items()):
            xs = _ordered(list(cells))
            label = f"{_short(line_key)} = {_name(line_value)}" if line_key else "network"
            result[label] = (
                positions(xs),
                scale * np.array([np.mean(cells[x]) for x in xs]),
                scale * np.array([np.std(cells[x]) for x in xs]),
            )
        return result

    def across_lines(metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        pooled: dict = defaultdict(list)
        for cells in _group(rows, x_key, line_key, metric).values():
            for x, values in cells.items():
                pooled[x] += values
        xs = _ordered(list(pooled))
        return (positions(xs), np.array([np.mean(pooled[x]) for x in xs])) if xs else None

    title = f"Test accuracy against {_short(x_key)}: mean ± sd over {seeds} seed(s) per point"
    return accuracy_against_setting(
        per_line("test/acc"),
        per_line("test/acc_gap", scale=100),
        across_lines("test/bayes_acc"),
        across_lines("test/bayes_acc_analytic"),
        xlabel=x_key,
        title=title,
        log_x=numeric and all(x > 0 for x in every_x),
        categories=None if numeric else [_name(x) for x in every_x],
    )


def markdown_table(
    rows: list[dict[str, Any]],
    x_key: str,
    line_key: str | None,
    metric: str,
    cell: Callable[[list[float]], str],
    reference: tuple[str, str] | None = None,
) -> str:
    """``cell(values over seeds)`` of ``metric`` per (line, x) cell, "—" where no finished run logged it;
    ``reference = (name, metric)`` adds a last row of that metric pooled over the lines."""
    values = _group(rows, x_key, line_key, metric)
    xs = _ordered([row[x_key] for row in rows])
    corner = f"{_short(line_key)} \\ {_short(x_key)}" if line_key else _short(x_key)
    table = [f"| {corner} | " + " | ".join(_name(x) for x in xs) + " |", "|---" * (len(xs) + 1) + "|"]

    def table_row(name: str, cells: dict) -> str:
        return f"| {name} | " + " | ".join(cell(cells[x]) if cells.get(x) else "—" for x in xs) + " |"

    for line_value in _ordered([row.get(line_key) for row in rows]) if line_key else [None]:
        table.append(table_row(_name(line_value) if line_key else "network", values[line_value]))
    if reference is not None:
        name, reference_metric = reference
        table.append(table_row(name, _group(rows, x_key, None, reference_metric)[None]))
    return "\n".join(table) + "\n"


def results_markdown(rows: list[dict[str, Any]], x_key: str, line_key: str | None) -> str:
    """The study's tables, mean ± sd over seeds per cell: test accuracy and, for data with an oracle, the
    Bayes rule on the same test points, the logit's error as an llr and its efficiency."""

    def mean_sd(scale: float, digits: int) -> Callable[[list[float]], str]:
        def cell(values: list[float]) -> str:
            mean = f"{scale * np.mean(values):.{digits}f}"
            # One seed has no spread to show: "± 0.00" would claim one.
            return mean if len(values) == 1 else f"{mean} ± {scale * np.std(values):.{digits}f}"

        return cell

    bayes = ("Bayes rule", "test/bayes_acc") if any("test/bayes_acc" in row for row in rows) else None
    sections = [
        "Test accuracy (%):\n\n" + markdown_table(rows, x_key, line_key, "test/acc", mean_sd(100, 2), bayes)
    ]
    if any("test/llr_rmse" in row for row in rows):
        rmse = markdown_table(rows, x_key, line_key, "test/llr_rmse", mean_sd(1, 3))
        efficiency = markdown_table(rows, x_key, line_key, "test/llr_efficiency", mean_sd(1, 2))
        sections.append(
            f"Error of the logit as a log-likelihood ratio, RMSE over the test points with |llr| ≤ "
            f"{INFORMATIVE_LLR:g} (nats):\n\n{rmse}"
        )
        calibrated = any("test/llr_efficiency_train_floor" in row for row in rows)
        seen = (
            "the training and validation points (a calibrated logit's scale was fitted on the validation "
            "split)"
            if calibrated
            else "the training points"
        )
        sections.append(
            "Efficiency: that RMSE over the floor, the RMSE of the best possible estimator that saw the "
            f"cell's data, {seen} (1 is the best possible; —: the floor does not apply, and each run's test "
            f"summary says why):\n\n{efficiency}"
        )
        if calibrated:
            train_only = markdown_table(
                rows, x_key, line_key, "test/llr_efficiency_train_floor", mean_sd(1, 2)
            )
            sections.append(
                "The same RMSE over the training-only floor, as if the validation points had not been seen "
                f"(below 1 means they were worth something):\n\n{train_only}"
            )
    return "\n".join(sections)


def efficiency_figure(rows: list[dict[str, Any]], x_key: str, line_key: str | None, seeds: int) -> Figure:
    """The llr efficiency against the x setting, one line per line setting, mean ± sd over seeds, on a log
    scale beside the floor; the finished cells without one are named below the axes."""
    groups = _group(rows, x_key, line_key, "test/llr_efficiency")
    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    axes = figure.add_subplot()
    for line_value, cells in sorted(groups.items()):
        xs = _ordered(list(cells))
        label = f"{_short(line_key)} = {_name(line_value)}" if line_key else "network"
        means = [np.mean(cells[x]) for x in xs]
        axes.errorbar(xs, means, yerr=[np.std(cells[x]) for x in xs], marker="o", capsize=3, label=label)
    axes.axhline(1, color="black", linewidth=1, label="floor: the best possible estimator")
    finished: dict = defaultdict(set)
    for row in rows:
        if row["status"] == "ok":
            finished[row.get(line_key) if line_key else None].add(row[x_key])
    missing = []
    for line_value in _ordered(list(finished)):
        lacking = [x for x in _ordered(list(finished[line_value])) if not groups.get(line_value, {}).get(x)]
        where = (
            "every " + _short(x_key)
            if len(lacking) == len(finished[line_value])
            else (f"{_short(x_key)}=" + ", ".join(_name(x) for x in lacking))
        )
        if lacking:
            missing.append((f"{_short(line_key)}={_name(line_value)} at " if line_key else "") + where)
    note = textwrap.fill("no floor, so no point: " + "; ".join(missing), width=90) if missing else ""
    axes.set_xlabel(f"{x_key}\n{note}".strip(), fontsize=9)
    axes.set_xscale("log")
    axes.set_yscale("log")
    # Plain numbers at 1, 2, 5, 10, ... rather than powers of ten alone.
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.yaxis.set_major_formatter(ScalarFormatter())
    axes.yaxis.set_minor_formatter(NullFormatter())
    axes.set_xticks(sorted({x for cells in groups.values() for x in cells}))
    axes.set_ylabel("llr RMSE / floor")
    axes.set_title(f"Efficiency of the logit as an llr: mean ± sd over {seeds} seed(s)", fontsize=10)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    return figure


def data_grid(rows: list[dict[str, Any]], x_key: str, line_key: str | None) -> Figure:
    """The training data of every (line, x) cell, a histogram each, like the article's sample grids."""
    seed = min(row["seed"] for row in rows)
    cells = {
        (row.get(line_key) if line_key else None, row[x_key]): row for row in rows if row["seed"] == seed
    }
    line_values = _ordered([line for line, _ in cells])
    xs = _ordered([x for _, x in cells])
    width, height = 2.6 * len(xs), 2.0 * len(line_values) + 0.6
    figure = Figure(figsize=(width, height))
    # Fixed margins, in inches, room enough for a panel's title and ticks: a layout engine would measure
    # every text of every panel, several times over, which costs more than drawing them.
    margins = {"left": 0.4 / width, "right": 1 - 0.1 / width}
    margins |= {"bottom": 0.3 / height, "top": 1 - 0.65 / height}
    spacing = {"wspace": 0.25, "hspace": 0.45}  # between panels, as a share of a panel's width and height
    grid = figure.subplots(len(line_values), len(xs), squeeze=False, gridspec_kw=margins | spacing)
    legend_drawn, drawn_along = False, "the data"
    for (i, line_value), (j, x) in itertools.product(enumerate(line_values), enumerate(xs)):
        axes = grid[i][j]
        histogram = cells.get((line_value, x), {}).get("histogram")
        if histogram is None:
            axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
        else:
            # Names from someone's table: a "$" in one would start matplotlib's mathtext.
            drawn_along = histogram.get("axis", drawn_along).replace("$", r"\$")
            for key, name in zip(("a", "b"), histogram.get("classes", ["a", "b"]), strict=True):
                label = name.replace("$", r"\$")
                axes.stairs(histogram[key], histogram["edges"], fill=True, alpha=0.6, label=label)
            if not legend_drawn:
                axes.legend(fontsize=7)
                legend_drawn = True
        title = f"{_short(x_key)}={_name(x)}" + (
            f", {_short(line_key)}={_name(line_value)}" if line_key else ""
        )
        axes.set_title(title, fontsize=8)
        axes.tick_params(labelsize=7)
    figure.suptitle(f"Training data of each cell (seed {seed}): {drawn_along}, by class")
    return figure


def report(
    rows: list[dict[str, Any]],
    sweep_dir: Path,
    x_key: str,
    line_key: str | None,
) -> None:
    """Write ``accuracy.png``, ``data_grid.png`` (where runs recorded their training data's histogram),
    ``llr_efficiency.png`` (where runs logged an efficiency and the x setting is a positive number) and
    ``results.md`` into ``sweep_dir``, and the figures to TensorBoard under ``sweep_dir/summary``."""
    # TensorBoard's own event writer, which torch's SummaryWriter wraps: the sweep's process loads no torch.
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    seeds = len({row["seed"] for row in rows})
    figures = {"accuracy": accuracy_figure(rows, x_key, line_key, seeds)}
    if any(row.get("histogram") for row in rows):  # data a histogram shows: one feature, or a projection
        figures["data_grid"] = data_grid(rows, x_key, line_key)
    numeric = all(isinstance(row[x_key], (int, float)) and row[x_key] > 0 for row in rows)
    if numeric and any("test/llr_efficiency" in row for row in rows):
        figures["llr_efficiency"] = efficiency_figure(rows, x_key, line_key, seeds)
    writer = EventFileWriter(str(sweep_dir / "summary"))
    for name, figure in figures.items():
        pixels = to_image(figure)
        encoded = io.BytesIO()
        imsave(encoded, pixels, format="png")
        png = encoded.getvalue()  # one PNG, for the file and for TensorBoard
        atomic_write(sweep_dir / f"{name}.png", lambda tmp, png=png: tmp.write_bytes(png))
        height, width, channels = pixels.shape
        image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png)
        summary = Summary(value=[Summary.Value(tag=f"sweep/{name}", image=image)])
        writer.add_event(Event(wall_time=time.time(), step=0, summary=summary))
    writer.close()
    tables = results_markdown(rows, x_key, line_key)
    atomic_write(sweep_dir / "results.md", lambda tmp: tmp.write_text(tables))
