"""In-memory batching: epoch-seeded shuffling and DDP sharding without a DataLoader.

Any data module whose data fits in memory can use these two classes. Why not a ``DataLoader``:
- per-sample ``__getitem__`` plus collate costs more per step than this model's forward and backward;
- Lightning leaves a plain iterable alone under DDP, where it silently breaks several sampler shapes,
  so the sharding here is explicit and tested.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

# Keeps shuffle streams apart from the streams a data module spawns from the same seed for its draws.
_SHUFFLE_STREAM = 1_000


class EpochBatchSampler:
    """Yields one rank's batches of indices; the order is a pure function of ``(seed, epoch)``.

    :class:`InMemoryBatches` sets the epoch as it draws each epoch's first batch, so a run resumed from a
    checkpoint draws the same order as an uninterrupted one: no RNG state to restore.

    Training (``shuffle=True``): every rank draws the same permutation, pads it with its own head to a
    multiple of ``world_size`` (as ``DistributedSampler`` does), and keeps every ``world_size``-th index.
    Ranks are disjoint and cover every sample once per epoch; at most ``world_size - 1`` repeat.

    Evaluation (``shuffle=False``): no padding, since repeats would bias metrics; each rank's share is
    split into the same number of batches, so no rank waits on a collective that another never joins.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < world_size:
            raise ValueError(f"{num_samples} samples cannot be shared among {world_size} processes")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def shard_size(self) -> int:
        """The most samples any one rank sees in an epoch."""
        return math.ceil(self.num_samples / self.world_size)

    def __len__(self) -> int:
        return math.ceil(self.shard_size / self.batch_size)

    def shard(self) -> Tensor | None:
        """This rank's indices for the current epoch, or ``None`` for all samples in their stored order."""
        if not self.shuffle:
            if self.world_size == 1:
                return None
            return torch.arange(self.rank, self.num_samples, self.world_size)
        rng = np.random.default_rng(
            np.random.SeedSequence(self.seed, spawn_key=(_SHUFFLE_STREAM, self.epoch))
        )
        order = torch.from_numpy(rng.permutation(self.num_samples))
        padding = self.shard_size * self.world_size - self.num_samples
        if padding:
            order = torch.cat([order, order[:padding]])
        return order[self.rank :: self.world_size]

    def batch_bounds(self, shard_length: int) -> list[tuple[int, int]]:
        """``(start, stop)`` of each batch in a shard: full batches when training, even splits otherwise."""
        if self.shuffle:
            return [
                (s, min(s + self.batch_size, shard_length)) for s in range(0, shard_length, self.batch_size)
            ]
        n = len(self)
        edges = [shard_length * i // n for i in range(n + 1)]
        return list(itertools.pairwise(edges))


class InMemoryBatches:
    """An iterable of batches, each a tuple of rows of the given tensors (``(features, targets)``, or
    ``(features, index)`` to predict), in the order ``order`` gives for the epoch ``epoch()`` returns (a
    trainer's ``current_epoch``; without it, the epoch last set on ``order``).

    The stored order is served as slices (views, no copy); a shuffled or sharded order gathers each batch's
    rows as it goes, so an epoch never holds a second copy of the data, only the order itself. The batches
    are on the tensors' device: kept there once, the data needs no host-to-device copy per step. To
    Lightning this is a plain iterable, which it leaves alone: the sharding among DDP ranks is ``order``'s.
    """

    def __init__(
        self, *tensors: Tensor, order: EpochBatchSampler, epoch: Callable[[], int] | None = None
    ) -> None:
        if any(len(t) != order.num_samples for t in tensors):
            raise ValueError("the tensors and the order disagree on the number of samples")
        self.tensors = tensors
        self.order = order
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.order)

    # A generator on purpose: the epoch is read as its first batch is drawn, when the trainer has begun that
    # epoch (a resumed one included), not when the trainer asks for an iterator, which can come earlier.
    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        if self.epoch is not None:
            self.order.set_epoch(self.epoch())
        shard = self.order.shard()
        if shard is None:
            for start, stop in self.order.batch_bounds(self.order.num_samples):
                yield tuple(t[start:stop] for t in self.tensors)
            return
        shard = shard.to(self.tensors[0].device)
        for start, stop in self.order.batch_bounds(len(shard)):
            rows = shard[start:stop]
            yield tuple(t[rows] for t in self.tensors)
