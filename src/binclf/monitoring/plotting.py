"""Figures, as matplotlib objects; callers decide where they go (TensorBoard, PNG).

Inputs are NumPy arrays. ``coordinate`` is what the x axis shows: x itself for 1-D data, else a projection
that the caller names in ``xlabel``.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # figures are written to files and TensorBoard, never shown on a screen

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from binclf.metrics import INFORMATIVE_LLR


def to_image(figure: Figure) -> np.ndarray:
    """Draw ``figure`` once, as RGBA pixels ``[height, width, 4]``: one drawing serves both the PNG file and
    TensorBoard, where saving and ``add_figure`` would each draw it again."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(6.4, 4.4))
    # Fixed margins, room enough for this module's labels: a layout engine would measure every text on
    # every draw, which costs more than the drawing itself.
    axes = figure.add_axes((0.11, 0.11, 0.86, 0.81))
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def histogram_on(
    axes: Axes,
    coordinate_a: np.ndarray,
    coordinate_b: np.ndarray,
    value_range: tuple[float, float],
    *,
    bins: int = 100,
    boundaries: np.ndarray | None = None,
) -> None:
    """Both classes on the same ``bins`` bins over ``value_range``, with Bayes boundaries where given."""
    edges = np.linspace(*value_range, bins + 1)
    # One filled outline per class: ``hist`` makes a rectangle per bin, which is slower to build and draw.
    for coordinate, label in [(coordinate_a, "a (label 0)"), (coordinate_b, "b (label 1)")]:
        axes.stairs(np.histogram(coordinate, bins=edges)[0], edges, fill=True, alpha=0.6, label=label)
    for i, boundary in enumerate([] if boundaries is None else boundaries):
        axes.axvline(boundary, color="black", linestyle="--", label="Bayes boundary" if i == 0 else None)


def data_histogram(
    coordinate_a: np.ndarray,
    coordinate_b: np.ndarray,
    value_range: tuple[float, float],
    *,
    bins: int = 100,
    boundaries: np.ndarray | None = None,
    xlabel: str = "x",
    title: str = "",
) -> Figure:
    """The article's Figure 1, with the Bayes decision boundaries marked where given."""
    figure, axes = _figure(title, xlabel, "number of samples")
    histogram_on(axes, coordinate_a, coordinate_b, value_range, bins=bins, boundaries=boundaries)
    axes.legend()
    return figure


def _learned_against_true(
    coordinate: np.ndarray,
    learned: np.ndarray,
    true: np.ndarray | None,
    labels: tuple[str, str],
    *,
    ylabel: str,
    xlabel: str,
    title: str,
) -> tuple[Figure, Axes]:
    figure, axes = _figure(title, xlabel, ylabel)
    if true is not None:
        axes.plot(coordinate, true, color="black", linestyle="--", label=labels[1])
    axes.plot(coordinate, learned, label=labels[0])
    return figure, axes


def posterior_curve(
    coordinate: np.ndarray,
    learned: np.ndarray,
    true: np.ndarray | None,
    *,
    xlabel: str = "x",
    title: str = "",
) -> Figure:
    """The learned p(b | x) against the true posterior sigmoid(llr)."""
    labels = ("network", "true posterior")
    figure, axes = _learned_against_true(
        coordinate, learned, true, labels, ylabel="p(b | x)", xlabel=xlabel, title=title
    )
    axes.set_ylim(-0.02, 1.02)
    axes.legend()
    return figure


def logit_curve(
    coordinate: np.ndarray, logit: np.ndarray, llr: np.ndarray | None, *, xlabel: str = "x", title: str = ""
) -> Figure:
    """The network's logit against the true log-likelihood ratio, with the informative band shaded."""
    labels = ("network logit", "true llr")
    figure, axes = _learned_against_true(
        coordinate, logit, llr, labels, ylabel="logit / log-likelihood ratio", xlabel=xlabel, title=title
    )
    axes.axhspan(
        -INFORMATIVE_LLR, INFORMATIVE_LLR, color="grey", alpha=0.15, label=f"|llr| ≤ {INFORMATIVE_LLR:g}"
    )
    axes.legend()
    return figure


def roc_curve(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]],
    *,
    title: str = "",
) -> Figure:
    """ROC curves, each ``name: (false positive rates, true positive rates, AUROC)``."""
    figure, axes = _figure(title, "false positive rate", "true positive rate")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    for (name, (fpr, tpr, auroc)), style in zip(curves.items(), ["-", "--"], strict=False):
        axes.plot(fpr, tpr, linestyle=style, label=f"{name} (AUROC {auroc:.4f})")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.legend(loc="lower right")
    return figure


def reliability_diagram(
    probabilities: np.ndarray,
    targets: np.ndarray,
    *,
    bins: int = 15,
    title: str = "",
) -> Figure:
    """Observed frequency of class b against the mean predicted probability, in ``bins`` equal-width bins.

    A calibrated model lies on the diagonal. Marker area follows the number of points in each bin.
    """
    figure, axes = _figure(title, "mean predicted p(b | x)", "observed fraction of class b")
    which = np.clip((probabilities * bins).astype(int), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    filled = counts > 0
    mean_predicted = np.bincount(which, weights=probabilities, minlength=bins)[filled] / counts[filled]
    observed = np.bincount(which, weights=targets, minlength=bins)[filled] / counts[filled]
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    axes.plot(mean_predicted, observed, color="C0")
    sizes = 10 + 200 * counts[filled] / counts.max()
    axes.scatter(mean_predicted, observed, s=sizes, color="C0", label="network (area: points per bin)")
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.legend(loc="lower right")
    return figure


def accuracy_against_setting(
    lines: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    bayes: tuple[np.ndarray, np.ndarray] | None,
    analytic: tuple[np.ndarray, np.ndarray] | None,
    *,
    xlabel: str,
    title: str,
    log_x: bool = True,
    categories: list[str] | None = None,
) -> Figure:
    """Test accuracy against a setting: ``lines[label] = (x, mean, spread)`` drawn with error bars, beside
    the Bayes rule measured on the same test points and its analytic value, each ``(x, accuracy)``.
    With ``categories``, x is the position of each named setting (0, 1, ...)."""
    figure, axes = _figure(title, xlabel, "test accuracy")
    for label, (x, mean, spread) in lines.items():
        axes.errorbar(x, mean, yerr=spread, marker="o", markersize=4, capsize=3, label=label)
    if analytic is not None:
        axes.plot(*analytic, color="black", linewidth=1, label="Bayes limit (analytic)")
    if bayes is not None:
        axes.plot(
            *bayes, color="black", linestyle="none", marker="x", label="Bayes rule on the same test points"
        )
    if log_x:
        axes.set_xscale("log")
    if categories is not None:
        axes.set_xticks(range(len(categories)), categories)
    axes.legend(fontsize=8)
    return figure
