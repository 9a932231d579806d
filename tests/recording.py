"""A callback for tests that need to see what each DDP rank trained on; importable by the rank processes."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class RecordTrainingBatches(Callback):
    """Saves the features of every training batch, per rank and epoch, as ``seen.rank<R>.epoch<E>.pt``."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: tuple, batch_idx: int
    ) -> None:
        self.seen.append(batch[0].detach().cpu().clone())

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        torch.save(torch.cat(self.seen), f"seen.rank{trainer.global_rank}.epoch{trainer.current_epoch}.pt")
        self.seen = []
