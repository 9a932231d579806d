"""What a sweep shows: accuracy against a setting beside the Bayes limit, the data of every cell, a table."""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import imsave

from binclf.monitoring.plotting import accuracy_against_setting, to_image
from binclf.safe_io import atomic_write
from binclf.study.sweep import value_name


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


def markdown_table(rows: list[dict[str, Any]], x_key: str, line_key: str | None) -> str:
    """Mean ± sd test accuracy (%) per cell, and a last row for the Bayes rule on the same test points."""
    accuracy = _group(rows, x_key, line_key, "test/acc")
    bayes = _group(rows, x_key, None, "test/bayes_acc").get(None, {})
    xs = _ordered([row[x_key] for row in rows])
    corner = f"{_short(line_key)} \\ {_short(x_key)}" if line_key else _short(x_key)
    header = f"| {corner} | " + " | ".join(_name(x) for x in xs)
    lines = [header + " |", "|---" * (len(xs) + 1) + "|"]

    def cell(values: list[float]) -> str:
        return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}" if values else "—"

    for line_value in _ordered(list(accuracy)):
        name = _name(line_value) if line_key else "network"
        lines.append(f"| {name} | " + " | ".join(cell(accuracy[line_value].get(x, [])) for x in xs) + " |")
    lines.append("| Bayes rule | " + " | ".join(cell(bayes.get(x, [])) for x in xs) + " |")
    return "\n".join(lines) + "\n"


def data_grid(rows: list[dict[str, Any]], x_key: str, line_key: str | None) -> Figure:
    """The training data of every (line, x) cell, a histogram each, like the article's sample grids."""
    seed = min(row["seed"] for row in rows)
    cells = {
        (row.get(line_key) if line_key else None, row[x_key]): row for row in rows if row["seed"] == seed
    }
    line_values = _ordered([line for line, _ in cells])
    xs = _ordered([x for _, x in cells])
    figure = Figure(figsize=(2.6 * len(xs), 2.0 * len(line_values) + 0.6), layout="constrained")
    grid = figure.subplots(len(line_values), len(xs), squeeze=False)
    legend_drawn = False
    for (i, line_value), (j, x) in itertools.product(enumerate(line_values), enumerate(xs)):
        axes = grid[i][j]
        histogram = cells.get((line_value, x), {}).get("histogram")
        if histogram is None:
            axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
        else:
            for name in ("a", "b"):
                axes.stairs(histogram[name], histogram["edges"], fill=True, alpha=0.6, label=name)
            if not legend_drawn:
                axes.legend(fontsize=7)
                legend_drawn = True
        title = f"{_short(x_key)}={_name(x)}" + (
            f", {_short(line_key)}={_name(line_value)}" if line_key else ""
        )
        axes.set_title(title, fontsize=8)
        axes.tick_params(labelsize=7)
    figure.suptitle(f"Training data of each cell (seed {seed}): classes a and b")
    return figure


def report(
    rows: list[dict[str, Any]],
    sweep_dir: Path,
    x_key: str,
    line_key: str | None,
) -> None:
    """Write ``accuracy.png``, ``data_grid.png`` and ``results.md`` into ``sweep_dir``, and the figures to
    TensorBoard under ``sweep_dir/summary``."""
    from torch.utils.tensorboard import SummaryWriter

    seeds = len({row["seed"] for row in rows})
    figures = {
        "accuracy": accuracy_figure(rows, x_key, line_key, seeds),
        "data_grid": data_grid(rows, x_key, line_key),
    }
    writer = SummaryWriter(str(sweep_dir / "summary"))
    for name, figure in figures.items():
        image = to_image(figure)
        atomic_write(sweep_dir / f"{name}.png", lambda tmp, pixels=image: imsave(tmp, pixels, format="png"))
        writer.add_image(f"sweep/{name}", image, dataformats="HWC")
    writer.close()
    table = markdown_table(rows, x_key, line_key)
    atomic_write(sweep_dir / "results.md", lambda tmp: tmp.write_text(table))
