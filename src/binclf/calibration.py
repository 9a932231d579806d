"""Calibration of the logit on held-out data, so that it can be read as a log-likelihood ratio.

A classifier trained with BCE has the true log-likelihood ratio (llr) as its optimum, but a network stopped
short of it, as the article's is, outputs a logit too timid away from the boundary. One or two numbers fitted
on the validation split correct most of that, without touching the network (Platt 1999; Guo et al. 2017,
*On calibration of modern neural networks*; Cranmer, Pavez & Louppe 2015 for its use as a ratio):

- ``temperature``: ``scale · logit``. Keeps the decision boundary, so accuracy cannot change.
- ``affine``: ``scale · logit + shift`` (Platt scaling). Moves the boundary too, so it can correct a shifted
  one, at the cost of one more number estimated from the validation split.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Calibration = Literal["none", "temperature", "affine"]


def fit_calibration(logits: Tensor, targets: Tensor, kind: Calibration) -> tuple[float, float]:
    """``(scale, shift)`` minimising the BCE of ``scale · logit + shift`` on ``(logits, targets)``; the
    shift stays 0 for ``temperature``, and ``none`` returns the identity ``(1, 0)``.

    The targets are Platt's: (N₁ + 1) / (N₁ + 2) for class 1 and 1 / (N₀ + 2) for class 0 instead of 1 and
    0, so that the fit stays finite on data the network separates perfectly.
    """
    if kind == "none":
        return 1.0, 0.0
    logits, targets = logits.detach().double().flatten().cpu(), targets.detach().double().flatten().cpu()
    positives = targets.sum()
    negatives = len(targets) - positives
    soft_targets = torch.where(targets > 0.5, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    # The scale is fitted as its logarithm, so it stays positive: a calibration never flips a decision.
    log_scale = torch.zeros((), dtype=torch.float64, requires_grad=True)
    shift = torch.zeros((), dtype=torch.float64, requires_grad=kind == "affine")
    parameters = [log_scale, shift] if kind == "affine" else [log_scale]
    optimizer = torch.optim.LBFGS(
        parameters, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def loss() -> Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(
            log_scale.exp() * logits + shift, soft_targets
        )
        value.backward()
        return value

    optimizer.step(loss)
    return log_scale.exp().item(), shift.item()
