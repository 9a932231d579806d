"""Two isotropic Gaussians with equal priors: sampling, and the exact answers to measure a classifier by."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def normal_cdf(z: float) -> float:
    """Φ(z), the standard normal CDF."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


class TwoGaussians:
    """Class a ~ N(mean_a, scale_a² I) and class b ~ N(mean_b, scale_b² I) in ``dim`` dimensions.

    Knowing both densities gives the Bayes rule (predict b when the log-likelihood ratio is positive), the
    best any classifier can do, on any set of points drawn from them.
    """

    def __init__(self, mean_a: np.ndarray, mean_b: np.ndarray, scale_a: float, scale_b: float) -> None:
        self.mean_a = np.asarray(mean_a, dtype=np.float64)
        self.mean_b = np.asarray(mean_b, dtype=np.float64)
        self.scale_a = float(scale_a)
        self.scale_b = float(scale_b)
        self.dim = len(self.mean_a)
        difference = self.mean_b - self.mean_a
        norm = np.linalg.norm(difference)
        # Plots use one coordinate: x itself in 1-D, else the projection onto the mean difference.
        self.direction = difference / norm if self.dim > 1 and norm > 0 else np.eye(self.dim)[0]

    def sample(self, num_per_class: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """Features ``[2n, dim]`` and targets ``[2n, 1]``: ``n = num_per_class`` points of class a (label 0),
        then as many of class b (label 1)."""
        features = np.empty((2 * num_per_class, self.dim), dtype=np.float32)
        # In place, so that a 10^7-sample draw costs its own bytes and no temporaries.
        rng.standard_normal(out=features, dtype=np.float32)
        features[:num_per_class] *= self.scale_a
        features[num_per_class:] *= self.scale_b
        features[:num_per_class] += self.mean_a.astype(np.float32)
        features[num_per_class:] += self.mean_b.astype(np.float32)
        targets = torch.zeros(2 * num_per_class, 1)
        targets[num_per_class:] = 1.0
        return torch.from_numpy(features), targets

    def log_likelihood_ratio(self, x: Tensor) -> Tensor:
        """log p(x | b) − log p(x | a), ``[n, 1]``, computed in float64 and returned in ``x``'s dtype."""
        x64 = x.double()
        mean_a = torch.as_tensor(self.mean_a, device=x.device)
        mean_b = torch.as_tensor(self.mean_b, device=x.device)
        squared_a = ((x64 - mean_a) ** 2).sum(dim=1, keepdim=True)
        squared_b = ((x64 - mean_b) ** 2).sum(dim=1, keepdim=True)
        llr = (
            squared_a / (2 * self.scale_a**2)
            - squared_b / (2 * self.scale_b**2)
            - self.dim * math.log(self.scale_b / self.scale_a)
        )
        return llr.to(x.dtype)

    @property
    def bayes_accuracy(self) -> float | None:
        """The Bayes rule's expected accuracy where a closed form exists (equal scales): Φ(‖μb − μa‖ / 2σ)."""
        if self.scale_a != self.scale_b:
            return None
        return normal_cdf(float(np.linalg.norm(self.mean_b - self.mean_a)) / (2 * self.scale_a))

    def project(self, x: Tensor) -> Tensor:
        """The plotting coordinate of each point, shape ``[n]``."""
        return x.double() @ torch.as_tensor(self.direction, device=x.device)

    def line(self, t: Tensor) -> Tensor:
        """Points ``[n, dim]`` on the line through the midpoint of the means whose coordinate is ``t``."""
        middle = (self.mean_a + self.mean_b) / 2
        offset = t.double().unsqueeze(1) - float(middle @ self.direction)
        points = torch.as_tensor(middle) + offset * torch.as_tensor(self.direction)
        return points.float()

    def span(self, scales: float) -> tuple[float, float]:
        """The coordinate range reaching ``scales`` scales beyond both class centres."""
        centres = sorted((float(self.mean_a @ self.direction), float(self.mean_b @ self.direction)))
        widest = max(self.scale_a, self.scale_b)
        return centres[0] - scales * widest, centres[1] + scales * widest

    def describe(self) -> str:
        """The settings in a few words, for figure titles."""

        def mean(m: np.ndarray) -> str:
            return f"{m[0]:g}" if len(set(m.tolist())) == 1 else "[" + ", ".join(f"{v:g}" for v in m) + "]"

        scale = (
            f"{self.scale_a:g}" if self.scale_a == self.scale_b else f"{self.scale_a:g} / {self.scale_b:g}"
        )
        return f"d={self.dim}, μa={mean(self.mean_a)}, μb={mean(self.mean_b)}, σ={scale}"
