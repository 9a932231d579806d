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

from binclf.llr import INFORMATIVE_LLR


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
    class_names: tuple[str, str] = ("a", "b"),
) -> None:
    """Both classes on the same ``bins`` bins over ``value_range``, with Bayes boundaries where given."""
    edges = np.linspace(*value_range, bins + 1)
    labels = [f"{name} (label {label})" for label, name in enumerate(class_names)]
    # One filled outline per class: ``hist`` makes a rectangle per bin, which is slower to build and draw.
    for coordinate, label in zip((coordinate_a, coordinate_b), labels, strict=True):
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
    class_names: tuple[str, str] = ("a", "b"),
    xlabel: str = "x",
    title: str = "",
) -> Figure:
    """The article's Figure 1, with the Bayes decision boundaries marked where given."""
    figure, axes = _figure(title, xlabel, "number of samples")
    histogram_on(
        axes,
        coordinate_a,
        coordinate_b,
        value_range,
        bins=bins,
        boundaries=boundaries,
        class_names=class_names,
    )
    axes.legend()
    return figure


def training_loss(steps: np.ndarray, losses: np.ndarray, *, title: str = "") -> Figure:
    """The article's Figure 2: the training loss of every optimizer step, on a log axis."""
    figure, axes = _figure(title, "optimizer step", "training loss (BCE)")
    axes.set_position((0.16, 0.11, 0.81, 0.81))  # room for the labels of a log axis within one decade
    axes.plot(steps, losses, linewidth=0.8)
    axes.set_yscale("log")
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
    """ROC curves, each ``name: (false positive rates, true positive rates, AUROC)``.

    The false positive rate is on a log axis, down to one negative point in the evaluation set: with an
    AUROC near 1 the whole difference between curves lies at small false positive rates, which a linear
    axis squeezes into its left edge.
    """
    figure, axes = _figure(title, "false positive rate (log)", "true positive rate")
    smallest = min((fpr[fpr > 0].min() for fpr, _, _ in curves.values() if (fpr > 0).any()), default=1e-4)
    chance = np.geomspace(smallest, 1, 50)
    axes.plot(chance, chance, color="grey", linestyle=":", label="chance")
    for (name, (fpr, tpr, auroc)), style in zip(curves.items(), ["-", "--"], strict=False):
        axes.step(fpr, tpr, where="post", linestyle=style, label=f"{name} (AUROC {auroc:.4f})")
    axes.set_xscale("log")
    axes.set_xlim(smallest / 2, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.legend(loc="lower right")
    return figure


def reliability_diagram(
    probabilities: np.ndarray,
    targets: np.ndarray,
    *,
    bins: int = 15,
    positive: str = "b",
    title: str = "",
) -> Figure:
    """Observed frequency of the ``positive`` class (class 1) against the mean predicted probability, in
    ``bins`` equal-width bins. A calibrated model lies on the diagonal. Marker area follows the number of
    points in each bin.
    """
    figure, axes = _figure(title, f"mean predicted p({positive} | x)", f"observed fraction of {positive}")
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
