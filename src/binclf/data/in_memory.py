"""The base of binclf's data modules: splits held in memory, and the contract with the rest of binclf."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from binclf.data.batches import EpochBatchSampler, InMemoryBatches

# What a checkpoint may say a feature's centre and spread are: far beyond any real data (a timestamp's
# centre is 2e9), and a spread far enough from 0 that a standardised feature stays a number a network can
# take (one scaled by 1e12 turns every logit into noise).
_LARGEST_CENTRE, _SPREAD_RANGE = 1e12, (1e-6, 1e12)


def check_standardisation(centre: Any, spread: Any, width: int, names: tuple[str, str]) -> None:
    """Raise ``ValueError`` unless ``centre`` and ``spread``, read from a checkpoint's data state, are lists
    of ``width`` floats: every centre finite and within ±1e12, every spread between 1e-6 and 1e12."""
    for name, values, ok in [
        (names[0], centre, lambda v: abs(v) <= _LARGEST_CENTRE),
        (names[1], spread, lambda v: _SPREAD_RANGE[0] <= v <= _SPREAD_RANGE[1]),
    ]:
        if not (
            isinstance(values, list)
            and len(values) == width
            and all(isinstance(v, float) and ok(v) for v in values)
        ):
            raise ValueError(f"the checkpoint's data state is damaged: {name} is {values!r}"[:200])


class LabelledData(NamedTuple):
    """Features ``[n, dim]`` and float targets ``[n, 1]`` (0 for class 0, 1 for class 1)."""

    features: Tensor
    targets: Tensor


class InMemoryDataModule(LightningDataModule):
    """Batching, per-epoch shuffling and DDP sharding for data held in memory, and the contract between a
    data module and the rest of binclf.

    A subclass fills ``train_set``, ``val_set``, ``test_set`` (each :class:`LabelledData`) and
    ``predict_features`` in ``setup``, and defines :attr:`input_dim`. Everything else below has a default
    that fits any data; a subclass overrides what it knows better:

    - :meth:`transform`: what the network sees (applied when a loader is built, after a checkpoint's state
      has been restored);
    - :attr:`label_names`: what class 0 and class 1 are called in predictions, and :attr:`class_names` in
      figures;
    - the oracle, for data whose densities are known: :attr:`has_oracle`, :meth:`log_likelihood_ratio`,
      :attr:`bayes_accuracy_analytic`, :meth:`llr_rmse_floor` and :meth:`grid`; the model's test metrics
      and the figures use them;
    - how figures draw the data: :meth:`project`, :attr:`projection_label`, :attr:`feature_range`,
      :attr:`description`;
    - :meth:`prediction_columns`: what identifies each row of the predictions file.

    Training and validation batches are ``(features, targets)``; test batches of data with an oracle carry
    the true llr of each point as a third tensor, computed from the features as drawn (the network sees
    them transformed). Predict batches are ``(features, index)``.
    """

    #: Whether :meth:`log_likelihood_ratio` and :meth:`grid` know the true densities.
    has_oracle = False
    #: The settings that tell one dataset from another (a file, its columns): ``binclf test`` finds the
    #: latest run trained with the same values, and passes over runs of other data.
    identity_settings: tuple[str, ...] = ()

    def __init__(self, batch_size: int, eval_batch_size: int, seed: int) -> None:
        super().__init__()
        for name, value in [("batch_size", batch_size), ("eval_batch_size", eval_batch_size)]:
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be a whole number from 0 to 2**32 - 1, got {seed}")
        self.batch_size = batch_size
        # Evaluation batches only split the work: metrics weigh every sample alike whatever their size, and
        # a few large batches cost far less per epoch than many small ones.
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.label_names: list[str] = ["0", "1"]
        self.train_set: LabelledData | None = None
        self.val_set: LabelledData | None = None
        self.test_set: LabelledData | None = None
        self.predict_features: Tensor | None = None

    @property
    def class_names(self) -> list[str]:
        """What figures call class 0 and class 1: the label names, unless a subclass knows better."""
        return self.label_names

    @property
    def input_dim(self) -> int:
        """Number of features per sample; the CLI links it to the network's ``input_dim``."""
        raise NotImplementedError(f"{type(self).__name__} must define input_dim")

    def transform(self, features: Tensor) -> Tensor:
        """What the network sees of ``features``; identity unless a subclass says otherwise."""
        return features

    def log_likelihood_ratio(self, features: Tensor) -> Tensor:
        """The oracle: log p(x | class 1) − log p(x | class 0) from the true densities, ``[n, 1]``."""
        raise NotImplementedError(f"{type(self).__name__} knows no densities (has_oracle is False)")

    @property
    def bayes_accuracy_analytic(self) -> float | None:
        """The Bayes rule's expected accuracy, where a closed form exists; else ``None``."""
        return None

    def llr_rmse_floor(self, with_validation: bool = False) -> tuple[float | None, str]:
        """The llr RMSE that the best possible estimator trained on this data would make on the test points
        (``test/llr_efficiency`` is the model's RMSE over it), or ``None`` and why there is none. With
        ``with_validation``, the estimator has seen the validation points too, as a calibrated logit has."""
        return None, f"{type(self).__name__} knows no floor for the llr error"

    def grid(self, num_points: int) -> tuple[Tensor, Tensor]:
        """``num_points`` even steps of the :meth:`project` coordinate and the points ``[n, dim]`` where it
        takes them, to trace the learned function against the oracle's."""
        raise NotImplementedError(f"{type(self).__name__} knows no densities (has_oracle is False)")

    def project(self, features: Tensor) -> Tensor:
        """One plotting coordinate per point, ``[n]``: the first feature unless a subclass knows better."""
        return features[:, 0]

    @property
    def projection_label(self) -> str:
        """What :meth:`project` measures, for plot axes."""
        return "first feature"

    @property
    def feature_range(self) -> tuple[float, float] | None:
        """Where nearly all the data lies along :meth:`project`; ``None``: wherever the data lies."""
        return None

    @property
    def description(self) -> str:
        """The data settings in a few words, for figure titles."""
        return type(self).__name__

    def prediction_columns(self, index: np.ndarray, features: np.ndarray) -> dict[str, list[Any]]:
        """What identifies each predicted row in the predictions file: its ``index`` and its features (``x``,
        or ``x0, x1, ...``), as the shortest text that reads back as the same float32."""
        names = ["x"] if features.shape[1] == 1 else [f"x{i}" for i in range(features.shape[1])]
        columns: dict[str, list[Any]] = {"index": index.tolist()}
        return columns | {name: [str(v) for v in features[:, j]] for j, name in enumerate(names)}

    def _batches(self, *tensors: Tensor, shuffle: bool) -> InMemoryBatches:
        trainer = self.trainer
        if trainer is not None:
            # Once per loader, not per step: on a GPU the whole split then lives on the device, and
            # Lightning's per-batch transfer finds every batch already there.
            tensors = tuple(t.to(trainer.strategy.root_device) for t in tensors)
        order = EpochBatchSampler(
            len(tensors[0]),
            self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
        )
        epoch = (lambda: trainer.current_epoch) if trainer is not None else None
        return InMemoryBatches(*tensors, order=order, epoch=epoch)

    def _labelled(self, data: LabelledData, shuffle: bool) -> InMemoryBatches:
        return self._batches(self.transform(data.features), data.targets, shuffle=shuffle)

    def train_dataloader(self) -> InMemoryBatches:
        return self._labelled(self.train_set, shuffle=True)

    def val_dataloader(self) -> InMemoryBatches:
        return self._labelled(self.val_set, shuffle=False)

    def test_dataloader(self) -> InMemoryBatches:
        if not self.has_oracle:
            return self._labelled(self.test_set, shuffle=False)
        features, targets = self.test_set
        llr = self.log_likelihood_ratio(features)
        return self._batches(self.transform(features), targets, llr, shuffle=False)

    def predict_dataloader(self) -> InMemoryBatches:
        index = torch.arange(len(self.predict_features))
        return self._batches(self.transform(self.predict_features), index, shuffle=False)
