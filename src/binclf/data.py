"""The two-Gaussian data of the article, as a Lightning data module."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from binclf.batches import EpochBatchSampler, InMemoryBatches

# Each split draws from its own child of the data seed, so changing one split's size leaves the others as
# they were: the test set is the same points whatever the training size.
_TRAIN, _VAL, _TEST = 0, 1, 2

# The article's histogram (and the predict grid) spans this many scales beyond the outer means.
_SPAN_IN_SCALES = 5.0


class LabelledData(NamedTuple):
    """Features ``[n, dim]`` and float targets ``[n, 1]`` (0 for class a, 1 for class b)."""

    features: Tensor
    targets: Tensor


def sample_two_gaussians(
    num_per_class: int, mean_a: float, mean_b: float, scale: float, rng: np.random.Generator
) -> LabelledData:
    """Draw ``num_per_class`` points from N(mean_a, scale) (label 0), then as many from N(mean_b, scale)."""
    features = np.empty((2 * num_per_class, 1), dtype=np.float32)
    # In place, so that a 10^7-sample draw costs its own bytes and no temporaries.
    rng.standard_normal(out=features, dtype=np.float32)
    features *= scale
    features[:num_per_class] += mean_a
    features[num_per_class:] += mean_b
    targets = torch.zeros(2 * num_per_class, 1)
    targets[num_per_class:] = 1.0
    return LabelledData(torch.from_numpy(features), targets)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class TwoGaussianDataModule(LightningDataModule):
    """Two 1-D Gaussians with a shared scale: class a (label 0) around ``mean_a``, class b (label 1) around
    ``mean_b``. Sample counts are per class.

    ``seed`` fixes the data and each epoch's shuffle, whatever the model seed (``seed_everything``), so runs
    that differ only in their model seed see identical batches. Train, validation and test sets are
    independent draws. The predict set is an even grid of ``num_predict_points`` across both classes (the
    span of the article's histogram), which traces the learned decision function; its batches are
    ``(features, index)``.
    """

    def __init__(
        self,
        num_samples: int = 10_000,
        mean_a: float = 1.0,
        mean_b: float = 2.0,
        scale: float = 0.2,
        batch_size: int = 256,
        num_val_samples: int = 10_000,
        num_test_samples: int = 10_000,
        num_predict_points: int = 1_001,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in [
            ("num_samples", num_samples),
            ("num_val_samples", num_val_samples),
            ("num_test_samples", num_test_samples),
            ("num_predict_points", num_predict_points),
            ("batch_size", batch_size),
        ]:
            _require(value >= 1, f"{name} must be at least 1, got {value}")
        for name, value in [("mean_a", mean_a), ("mean_b", mean_b)]:
            _require(math.isfinite(value), f"{name} must be finite, got {value}")
        _require(math.isfinite(scale) and scale > 0, f"scale must be positive and finite, got {scale}")
        _require(seed >= 0, f"seed must be non-negative, got {seed}")
        self.save_hyperparameters()
        self.num_samples = num_samples
        self.mean_a = mean_a
        self.mean_b = mean_b
        self.scale = scale
        self.batch_size = batch_size
        self.num_val_samples = num_val_samples
        self.num_test_samples = num_test_samples
        self.num_predict_points = num_predict_points
        self.seed = seed
        self.train_set: LabelledData | None = None
        self.val_set: LabelledData | None = None
        self.test_set: LabelledData | None = None
        self.predict_features: Tensor | None = None

    @property
    def input_dim(self) -> int:
        """Number of features per sample; the CLI links it to the network's ``input_dim``."""
        return 1

    @property
    def feature_range(self) -> tuple[float, float]:
        """Where nearly all the data lies: five scales beyond the outer means (the article's histogram)."""
        low, high = sorted((self.mean_a, self.mean_b))
        return low - _SPAN_IN_SCALES * self.scale, high + _SPAN_IN_SCALES * self.scale

    def _draw(self, split: int, num_per_class: int) -> LabelledData:
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(split,)))
        return sample_two_gaussians(num_per_class, self.mean_a, self.mean_b, self.scale, rng)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_set is None:
            self.train_set = self._draw(_TRAIN, self.num_samples)
        if stage in ("fit", "validate") and self.val_set is None:
            self.val_set = self._draw(_VAL, self.num_val_samples)
        if stage == "test" and self.test_set is None:
            self.test_set = self._draw(_TEST, self.num_test_samples)
        if stage == "predict" and self.predict_features is None:
            grid = torch.linspace(*self.feature_range, self.num_predict_points)
            self.predict_features = grid.unsqueeze(1)

    def _batches(self, *tensors: Tensor, shuffle: bool) -> InMemoryBatches:
        trainer = self.trainer
        sampler = EpochBatchSampler(
            len(tensors[0]),
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
        )
        return InMemoryBatches(*tensors, sampler=sampler)

    def train_dataloader(self) -> InMemoryBatches:
        return self._batches(*self.train_set, shuffle=True)

    def val_dataloader(self) -> InMemoryBatches:
        return self._batches(*self.val_set, shuffle=False)

    def test_dataloader(self) -> InMemoryBatches:
        return self._batches(*self.test_set, shuffle=False)

    def predict_dataloader(self) -> InMemoryBatches:
        index = torch.arange(len(self.predict_features))
        return self._batches(self.predict_features, index, shuffle=False)
