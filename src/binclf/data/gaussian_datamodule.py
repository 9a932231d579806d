"""The two-Gaussian data of the article, as a Lightning data module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from binclf.data.gaussians import TwoGaussians
from binclf.data.in_memory import InMemoryDataModule, LabelledData, check_standardisation
from binclf.limits import require_memory
from binclf.llr import INFORMATIVE_LLR

# Each split draws from its own child of the data seed, so changing one split's size leaves the others as
# they were: the test set is the same points whatever the training size.
_TRAIN, _VAL, _TEST = 0, 1, 2

# A training size a checkpoint may claim: more samples per class than this would not fit in any memory.
_LARGEST_TRAINING_SET = 10**12

# Means within ±1e6, scales between 1e-6 and 1e6: the data is drawn in float32, and its log-likelihood
# ratio computed from it, which further out lose the digits that tell the classes apart.
_LARGEST = 1e6

# The article's histogram (and the predict grid) spans this many scales beyond the outer means.
_SPAN_IN_SCALES = 5.0


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _vector(name: str, value: float | Sequence[float], dim: int) -> np.ndarray:
    """A mean given as a scalar (broadcast to every dimension) or as ``dim`` values."""
    vector = (
        np.full(dim, value, dtype=np.float64) if np.isscalar(value) else np.asarray(value, dtype=np.float64)
    )
    _require(vector.shape == (dim,), f"{name} must be one number or a list of dim={dim} numbers, got {value}")
    _require(bool((np.abs(vector) <= _LARGEST).all()), f"{name} must lie within ±{_LARGEST:g}, got {value}")
    return vector


def _scales(value: float | Sequence[float]) -> tuple[float, float]:
    """One scale shared by both classes, or ``[scale_a, scale_b]``."""
    scales = [value, value] if np.isscalar(value) else list(value)
    _require(len(scales) == 2, f"scale must be one number or a pair [scale_a, scale_b], got {value}")
    _require(
        all(1 / _LARGEST <= s <= _LARGEST for s in scales),
        f"scale must lie between {1 / _LARGEST:g} and {_LARGEST:g}, got {value}",
    )
    return float(scales[0]), float(scales[1])


class TwoGaussianDataModule(InMemoryDataModule):
    """Two Gaussian classes with equal priors: a (label 0) around ``mean_a``, b (label 1) around ``mean_b``.

    In ``dim`` dimensions each class is isotropic; a mean is one number (broadcast) or ``dim`` numbers, and
    ``scale`` is one standard deviation shared by both classes or a pair ``[scale_a, scale_b]``. Sample
    counts are per class. ``batch_size`` is the training batch (the article's 256); ``eval_batch_size``
    only splits the validation, test and predict sets, whose metrics do not depend on it.

    ``standardize`` shows the network each feature centred and scaled by the mean and standard deviation of
    the two classes together (known exactly here, so nothing is estimated). On the article's data the llr
    is 25·(x − 1.5): from raw x the network must learn a steep line whose zero lies far from x = 0; from
    standardised x the zero is at 0 and the slope about half as steep. A checkpoint keeps the centre and
    spread, so its network is evaluated on inputs scaled as it was trained, whatever the config says.

    ``seed`` fixes the data and each epoch's shuffle, whatever the model seed (``seed_everything``), so runs
    that differ only in their model seed see identical batches. Train, validation and test sets are
    independent draws. The predict set is an even grid of ``num_predict_points`` along the line through both
    means (in 1-D: x itself, over the span of the article's histogram), which traces the learned decision
    function; its batches are ``(features, index)``.

    Because the densities are known, the data module is also an oracle: :meth:`log_likelihood_ratio` gives
    the Bayes rule on any points.
    """

    has_oracle = True
    identity_settings = ("dim",)

    def __init__(
        self,
        num_samples: int = 10_000,
        dim: int = 1,
        mean_a: float | list[float] = 1.0,
        mean_b: float | list[float] = 2.0,
        scale: float | list[float] = 0.2,
        batch_size: int = 256,
        eval_batch_size: int = 4096,
        num_val_samples: int = 10_000,
        num_test_samples: int = 10_000,
        num_predict_points: int = 1_001,
        standardize: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed)
        for name, value in [
            ("num_samples", num_samples),
            ("dim", dim),
            ("num_val_samples", num_val_samples),
            ("num_test_samples", num_test_samples),
            ("num_predict_points", num_predict_points),
        ]:
            _require(value >= 1, f"{name} must be at least 1, got {value}")
        # float32 features and targets (and each test point's true llr), refused before setup draws them.
        splits = [
            ("num_samples", num_samples, 2 * num_samples * (dim + 1)),
            ("num_val_samples", num_val_samples, 2 * num_val_samples * (dim + 1)),
            ("num_test_samples", num_test_samples, 2 * num_test_samples * (dim + 2)),
            ("num_predict_points", num_predict_points, num_predict_points * (dim + 1)),
        ]
        for name, value, floats in splits:
            require_memory(f"data.{name}={value:,} with data.dim={dim}", 4 * floats, "data")
        require_memory("data.dim with all the sample counts", 4 * sum(f for *_, f in splits), "data")
        self.gaussians = TwoGaussians(
            _vector("mean_a", mean_a, dim), _vector("mean_b", mean_b, dim), *_scales(scale)
        )
        self.save_hyperparameters()
        self.num_samples = num_samples
        self.num_val_samples = num_val_samples
        self.num_test_samples = num_test_samples
        self.num_predict_points = num_predict_points
        # What the network is shown, and the training size its llr floor is for: this config's, until a
        # checkpoint's state says what its network was trained with (``load_state_dict``).
        centre, spread = self.gaussians.mixture_moments()
        self.input_centre = centre.tolist() if standardize else [0.0] * self.gaussians.dim
        self.input_spread = spread.tolist() if standardize else [1.0] * self.gaussians.dim
        self.trained_num_samples = num_samples

    @property
    def input_dim(self) -> int:
        """Number of features per sample; the CLI links it to the network's ``input_dim``."""
        return self.gaussians.dim

    @property
    def class_names(self) -> list[str]:
        """The article's names for the two groups."""
        return ["a", "b"]

    @property
    def feature_range(self) -> tuple[float, float]:
        """Where nearly all the data lies along :meth:`project`: five scales beyond the outer means."""
        return self.gaussians.span(_SPAN_IN_SCALES)

    @property
    def projection_label(self) -> str:
        """What :meth:`project` measures, for plot axes."""
        return "x" if self.input_dim == 1 else "x projected onto (μb − μa) / ‖μb − μa‖"

    @property
    def description(self) -> str:
        """The data settings in a few words, for figure titles."""
        return f"{self.gaussians.describe()}, {self.num_samples:,} training samples per class"

    def project(self, features: Tensor) -> Tensor:
        """One plotting coordinate per point, ``[n]``: x in 1-D, else the position along μb − μa."""
        return self.gaussians.project(features)

    def grid(self, num_points: int) -> tuple[Tensor, Tensor]:
        """``num_points`` even steps of the :meth:`project` coordinate across :attr:`feature_range`, and the
        points ``[num_points, dim]`` on the line through both means where the coordinate takes them."""
        coordinate = torch.linspace(*self.feature_range, num_points)
        return coordinate, self.gaussians.line(coordinate)

    def transform(self, features: Tensor) -> Tensor:
        """What the network sees: ``features`` as drawn, or standardised (``standardize``)."""
        if not any(self.input_centre) and all(s == 1 for s in self.input_spread):
            return features
        centre = torch.tensor(self.input_centre, dtype=features.dtype, device=features.device)
        spread = torch.tensor(self.input_spread, dtype=features.dtype, device=features.device)
        return (features - centre) / spread

    def state_dict(self) -> dict[str, Any]:
        """Kept in every checkpoint, as plain data: the standardisation the network was trained with, which
        ``test`` and ``predict`` then apply whatever the config says, and the training size."""
        return {
            "input_centre": self.input_centre,
            "input_spread": self.input_spread,
            "trained_num_samples": self.trained_num_samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take a checkpoint's standardisation and training size (a resumed fit trains on the same data:
        other data settings are refused). The state comes from a file that may be anyone's, so it is
        checked first."""
        centre, spread = state.get("input_centre"), state.get("input_spread")
        trained_dim = len(centre) if isinstance(centre, list) else None
        if trained_dim is not None and trained_dim != self.gaussians.dim:
            raise ValueError(
                f"the checkpoint was trained on {trained_dim}-dimensional data, "
                f"but data.dim is {self.gaussians.dim}"
            )
        check_standardisation(centre, spread, self.gaussians.dim, ("input_centre", "input_spread"))
        size = state.get("trained_num_samples")
        if not (isinstance(size, int) and not isinstance(size, bool) and 0 < size <= _LARGEST_TRAINING_SET):
            raise ValueError(f"the checkpoint's data state is damaged: trained_num_samples is {size!r}"[:200])
        self.input_centre, self.input_spread = list(state["input_centre"]), list(state["input_spread"])
        self.trained_num_samples = size

    def log_likelihood_ratio(self, features: Tensor) -> Tensor:
        """The oracle: log p(x | b) − log p(x | a) from the true densities, ``[n, 1]``."""
        return self.gaussians.log_likelihood_ratio(features)

    @property
    def bayes_accuracy_analytic(self) -> float | None:
        """The Bayes rule's expected accuracy, where a closed form exists (equal scales); else ``None``."""
        return self.gaussians.bayes_accuracy

    def llr_rmse_floor(self, with_validation: bool = False) -> tuple[float | None, str]:
        """The llr RMSE of the best possible estimator trained on as many points per class as the network
        was (and, ``with_validation``, the validation split's too, as a calibrated logit's scale was fitted
        there), over the test points with |llr| ≤ 4 (:func:`binclf.data.gaussians.logistic_llr_floor`), or
        ``None`` and why."""
        seen = self.trained_num_samples + (self.num_val_samples if with_validation else 0)
        return self.gaussians.llr_rmse_floor(seen, INFORMATIVE_LLR)

    def _draw(self, split: int, num_per_class: int) -> LabelledData:
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(split,)))
        return LabelledData(*self.gaussians.sample(num_per_class, rng))

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_set is None:
            self.train_set = self._draw(_TRAIN, self.num_samples)
        if stage in ("fit", "validate") and self.val_set is None:
            self.val_set = self._draw(_VAL, self.num_val_samples)
        if stage == "test" and self.test_set is None:
            self.test_set = self._draw(_TEST, self.num_test_samples)
        if stage == "predict" and self.predict_features is None:
            _, self.predict_features = self.grid(self.num_predict_points)
