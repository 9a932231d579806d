"""Figures, as matplotlib objects; callers decide where they go (TensorBoard, PNG)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # figures are written to files and TensorBoard, never shown on a screen

import numpy as np
from matplotlib.figure import Figure


def data_histogram(
    features_a: np.ndarray,
    features_b: np.ndarray,
    value_range: tuple[float, float],
    *,
    bins: int = 100,
    title: str = "",
) -> Figure:
    """The article's Figure 1: both classes over the same ``bins`` equal bins spanning ``value_range``."""
    edges = np.linspace(*value_range, bins + 1)
    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    axes = figure.add_subplot()
    axes.hist(features_a, bins=edges, alpha=0.6, label="a (label 0)")
    axes.hist(features_b, bins=edges, alpha=0.6, label="b (label 1)")
    axes.set_xlabel("X")
    axes.set_ylabel("number of samples")
    axes.set_title(title)
    axes.legend()
    return figure
