"""Two isotropic Gaussians with equal priors: sampling, and the exact answers to measure a classifier by."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

# The llr floor rests on the asymptotic normality of a maximum-likelihood fit, which needs data where the
# ratio is being estimated: with fewer expected training points than this in the band, it is too optimistic
# (tests/test_llr_floor.py compares it with Monte-Carlo fits on both sides of this line).
MIN_TRAINING_POINTS_IN_BAND = 250
_QUADRATURE_NODES = 200


def normal_cdf(z: float) -> float:
    """Φ(z), the standard normal CDF."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def logistic_llr_floor(separation: float, dim: int, num_per_class: int, band: float) -> float:
    """The RMS error of the llr that the best possible estimator makes, for equal-scale Gaussians whose
    means lie ``separation`` scales apart, trained on ``num_per_class`` points per class and scored, as
    ``test/llr_rmse`` is, on test points with |llr| ≤ ``band``.

    Derivation. Every affine change of x leaves the problem as it was, so measure x in scales, with t the
    coordinate along the mean difference (zero midway) and v the ``dim − 1`` coordinates across it: class a
    has t ~ N(−δ/2, 1), class b t ~ N(δ/2, 1), both v ~ N(0, I), where δ = ``separation``. The true llr is
    δ·t, linear in x, so logistic regression llr̂ = w·x + b is correctly specified, and its maximum-likelihood
    fit on n = 2·``num_per_class`` points has, asymptotically, covariance I⁻¹ / n, where I = E[p(1−p) g gᵀ],
    g = (t, v, 1) and p = sigmoid(δ·t) (Cramér-Rao: no unbiased estimator does better). v is independent
    of the class and of t, so I splits into I_t = E[p(1−p) (t, 1)(t, 1)ᵀ] and c·I with c = E[p(1−p)]. The
    variance of llr̂ at a point is gᵀ I⁻¹ g / n = ((t, 1) I_t⁻¹ (t, 1)ᵀ + ‖v‖² / c) / n, and the floor is the
    root of its mean over test points in the band, |δ·t| ≤ ``band``:

        floor² = (E_band[(t, 1) I_t⁻¹ (t, 1)ᵀ] + (dim − 1) / c) / n.

    The expectations over the classes use Gauss-Hermite quadrature, the one over the band Gauss-Legendre
    quadrature weighted by the density of the test points.
    """
    delta = separation
    z, weights = np.polynomial.hermite_e.hermegauss(_QUADRATURE_NODES)
    weights = weights / weights.sum()
    information = np.zeros((2, 2))
    mean_p_q = 0.0
    for centre in (-delta / 2, delta / 2):
        t = centre + z
        p_q = 0.5 * weights / (2 + np.exp(delta * t) + np.exp(-delta * t))  # half of p(1 − p), per node
        g = np.stack([t, np.ones_like(t)])
        information += (g * p_q) @ g.T
        mean_p_q += p_q.sum()
    nodes, band_weights = np.polynomial.legendre.leggauss(_QUADRATURE_NODES)
    t = nodes * band / delta
    density = np.exp(-((t + delta / 2) ** 2) / 2) + np.exp(-((t - delta / 2) ** 2) / 2)
    band_weights = band_weights * density / (band_weights * density).sum()
    g = np.stack([t, np.ones_like(t)])
    along = np.einsum("in,ij,jn->n", g, np.linalg.inv(information), g) @ band_weights
    return math.sqrt((along + (dim - 1) / mean_p_q) / (2 * num_per_class))


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

    def llr_rmse_floor(self, num_per_class: int, band: float) -> tuple[float | None, str]:
        """The llr RMSE that the best estimator trained on ``num_per_class`` points per class makes over
        |llr| ≤ ``band`` (:func:`logistic_llr_floor`), or ``None`` and why it does not apply."""
        if self.scale_a != self.scale_b:
            return (
                None,
                "the scales differ, so the llr is quadratic in x and the logistic floor does not apply",
            )
        separation = float(np.linalg.norm(self.mean_b - self.mean_a)) / self.scale_a
        if separation == 0:
            return None, "the classes are the same distribution, so the llr is 0 everywhere"
        # Training points with |llr| <= band: |t| <= band / δ, counted in both classes.
        half_width = band / separation
        centre = separation / 2
        expected = 2 * num_per_class * (normal_cdf(half_width - centre) - normal_cdf(-half_width - centre))
        if expected < MIN_TRAINING_POINTS_IN_BAND:
            return None, (
                f"only {expected:,.0f} training points are expected where |llr| ≤ {band:g}, fewer than "
                f"{MIN_TRAINING_POINTS_IN_BAND}: too few for the asymptotic floor"
            )
        return logistic_llr_floor(separation, self.dim, num_per_class, band), ""

    def mixture_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and standard deviation of both classes pooled with equal weight."""
        centre = (self.mean_a + self.mean_b) / 2
        variance = (self.scale_a**2 + self.scale_b**2) / 2 + ((self.mean_b - self.mean_a) / 2) ** 2
        return centre, np.sqrt(variance)

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
