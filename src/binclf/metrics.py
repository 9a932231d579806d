"""What torchmetrics lacks for measuring against the oracle (:mod:`binclf.oracle`)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class PairedAccuracyGap(Metric):
    """Mean of ``reference_correct − model_correct`` over the same points, with its standard error.

    Both rules are scored on identical points, so the paired per-point difference has a much smaller
    standard error than two independent accuracies would. States are sums, so DDP ranks combine exactly.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_squared", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, model_correct: Tensor, reference_correct: Tensor) -> None:
        difference = reference_correct.double() - model_correct.double()
        self.total += difference.sum()
        self.total_squared += (difference**2).sum()
        self.count += difference.numel()

    def compute(self) -> tuple[Tensor, Tensor]:
        """``(gap, standard_error)``; the gap is positive when the reference is more accurate."""
        n = self.count.double()
        mean = self.total / n
        variance = (self.total_squared / n - mean**2) * n / (n - 1).clamp(min=1)
        return mean, (variance.clamp(min=0) / n).sqrt()


class LinearFit(Metric):
    """The least-squares line ``estimate ≈ slope · truth + offset``: ``(slope, offset)``.

    For a logit against the true llr it tells the two ways of being wrong apart: a slope below 1 is a logit
    too timid everywhere (a temperature error), an offset a boundary in the wrong place. If the logit is
    exactly ``a · llr + b``, the fit returns ``a`` and ``b``. States are sums, so DDP ranks combine exactly.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("count", "sum_truth", "sum_estimate", "sum_truth_squared", "sum_products"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, estimate: Tensor, truth: Tensor) -> None:
        estimate, truth = estimate.double().flatten(), truth.double().flatten()
        self.count += truth.numel()
        self.sum_truth += truth.sum()
        self.sum_estimate += estimate.sum()
        self.sum_truth_squared += (truth**2).sum()
        self.sum_products += (truth * estimate).sum()

    def compute(self) -> tuple[Tensor, Tensor]:
        """``(slope, offset)``; NaN when the truth takes fewer than two values."""
        n = self.count
        covariance = self.sum_products - self.sum_truth * self.sum_estimate / n
        variance = self.sum_truth_squared - self.sum_truth**2 / n
        slope = covariance / variance
        return slope, (self.sum_estimate - slope * self.sum_truth) / n
