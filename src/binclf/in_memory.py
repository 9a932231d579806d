"""A base for data modules that hold their splits as tensors in memory."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from binclf.batches import EpochBatchSampler, InMemoryBatches
from binclf.gaussians import LabelledData


class InMemoryDataModule(LightningDataModule):
    """Batching, per-epoch shuffling and DDP sharding for data held in memory.

    Subclasses fill ``train_set``, ``val_set``, ``test_set`` (each :class:`LabelledData`) and
    ``predict_features`` in ``setup``, and may override :meth:`transform` (applied when a loader is built,
    after a checkpoint's state has been restored). Predict batches are ``(features, index)``.
    """

    def __init__(self, batch_size: int, eval_batch_size: int, seed: int) -> None:
        super().__init__()
        for name, value in [("batch_size", batch_size), ("eval_batch_size", eval_batch_size)]:
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.batch_size = batch_size
        # Evaluation batches only split the work: metrics weigh every sample alike whatever their size, and
        # a few large batches cost far less per epoch than many small ones.
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.train_set: LabelledData | None = None
        self.val_set: LabelledData | None = None
        self.test_set: LabelledData | None = None
        self.predict_features: Tensor | None = None

    def transform(self, features: Tensor) -> Tensor:
        """What the network sees of ``features``; identity unless a subclass says otherwise."""
        return features

    def _batches(self, *tensors: Tensor, shuffle: bool) -> InMemoryBatches:
        trainer = self.trainer
        if trainer is not None:
            # Once per loader, not per step: on a GPU the whole split then lives on the device, and
            # Lightning's per-batch transfer finds every batch already there.
            tensors = tuple(t.to(trainer.strategy.root_device) for t in tensors)
        sampler = EpochBatchSampler(
            len(tensors[0]),
            self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
        )
        return InMemoryBatches(*tensors, sampler=sampler)

    def _labelled(self, data: LabelledData, shuffle: bool) -> InMemoryBatches:
        return self._batches(self.transform(data.features), data.targets, shuffle=shuffle)

    def train_dataloader(self) -> InMemoryBatches:
        return self._labelled(self.train_set, shuffle=True)

    def val_dataloader(self) -> InMemoryBatches:
        return self._labelled(self.val_set, shuffle=False)

    def test_dataloader(self) -> InMemoryBatches:
        return self._labelled(self.test_set, shuffle=False)

    def predict_dataloader(self) -> InMemoryBatches:
        index = torch.arange(len(self.predict_features))
        return self._batches(self.transform(self.predict_features), index, shuffle=False)
