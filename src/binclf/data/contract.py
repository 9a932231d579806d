"""What binclf asks of a data module beyond Lightning's, checked by what a module provides, not by its class.

- Any ``LightningDataModule`` whose loaders give ``(features, targets)`` batches, and that has an
  ``input_dim`` (the CLI links it to the network's), trains, validates, tests and predicts.
- One that also holds its splits in memory (:class:`InMemoryData`) gets figures of its data, and
  predictions that name each row by its own columns.
- One that also knows its densities (:class:`Oracle` with ``has_oracle`` true) gets the Bayes rule's
  accuracy and the logit's error as a log-likelihood ratio, against the floor where one is known.

:class:`~binclf.data.InMemoryDataModule` provides the first two with defaults that fit any data, and the
oracle's methods to override.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch import Tensor


@runtime_checkable
class InMemoryData(Protocol):
    """Splits held in memory, and how to draw them and name their rows."""

    train_set: Any  # LabelledData, once set up
    val_set: Any
    test_set: Any
    predict_features: Tensor | None
    label_names: list[str]

    @property
    def class_names(self) -> list[str]: ...

    @property
    def projection_label(self) -> str: ...

    @property
    def feature_range(self) -> tuple[float, float] | None: ...

    @property
    def description(self) -> str: ...

    def transform(self, features: Tensor) -> Tensor: ...

    def project(self, features: Tensor) -> Tensor: ...

    def prediction_columns(self, index: np.ndarray, features: np.ndarray) -> dict[str, list[Any]]: ...


@runtime_checkable
class Oracle(Protocol):
    """The true densities of synthetic data: the best possible answer, to measure a run against."""

    has_oracle: bool

    @property
    def bayes_accuracy_analytic(self) -> float | None: ...

    def log_likelihood_ratio(self, features: Tensor) -> Tensor: ...

    def llr_rmse_floor(self, with_validation: bool = False) -> tuple[float | None, str]: ...

    def grid(self, num_points: int) -> tuple[Tensor, Tensor]: ...


def has_oracle(datamodule: Any) -> bool:
    """Whether ``datamodule`` knows its densities (an :class:`Oracle` whose ``has_oracle`` is true)."""
    return isinstance(datamodule, Oracle) and bool(datamodule.has_oracle)


def what_it_misses(datamodule: Any) -> str | None:
    """One line saying what ``datamodule`` will not get for lack of :class:`InMemoryData`; ``None`` if it
    provides it."""
    if datamodule is None or isinstance(datamodule, InMemoryData):
        return None
    return (
        f"{type(datamodule).__name__} does not hold its splits in memory (binclf.data.contract.InMemoryData)"
        ": no figures of its data, no oracle metrics, and predictions identified by their position only"
    )
