"""Predictions as a CSV file in the run directory."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from binclf.data.contract import InMemoryData
from binclf.safe_io import atomic_write, spreadsheet_safe


def unused_path(path: Path) -> Path:
    """``path``, or ``stem-2.suffix``, ``stem-3.suffix``, ... if it is taken: a command that writes into
    an existing run adds its files, and never replaces another command's."""
    candidates = (path.with_name(f"{path.stem}-{n}{path.suffix}") for n in itertools.count(2))
    return path if not path.exists() else next(p for p in candidates if not p.exists())


class PredictionWriter(Callback):
    """Writes ``predict`` results as CSV in the run directory, one row per input, in input order; a second
    predict in the same run writes ``predictions-2.csv``, and so on.

    The first columns identify each row: the data module's ``prediction_columns`` (``index`` and the
    features as drawn, or a table's id column). Then come ``logit``, ``probability`` of class 1, and
    ``predicted_label``: the data module's ``label_names[1]`` when the probability exceeds ``threshold``, else
    ``label_names[0]``; for a calibrated model, last, the network's own ``raw_logit``. Predict batches are
    ``(features, index)``, the features as the network sees them.
    Under DDP each rank writes ``<stem>.rank<N>.csv``.
    """

    def __init__(self, filename: str = "predictions.csv", threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
        if not filename or Path(filename).name != filename or filename in (".", ".."):
            raise ValueError(
                f"predictions.filename must be a file name, written into the run folder, got {filename!r}"
            )
        self.filename = filename
        self.threshold = threshold
        self.path: Path | None = None
        self._batches: list[tuple[torch.Tensor, ...]] = []
        self._rows = 0

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._batches, self._rows = [], 0

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: dict[str, torch.Tensor],
        batch: tuple[torch.Tensor, ...],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # A data module that is not InMemoryData gives features only: its rows are numbered as they come.
        index = batch[1] if len(batch) > 1 else torch.arange(self._rows, self._rows + len(batch[0]))
        self._rows += len(batch[0])
        columns = (index, outputs["logit"], outputs["probability"], outputs.get("raw_logit"))
        self._batches.append(tuple(t.detach().cpu() for t in columns if t is not None))

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run:  # a smoke test, which saves nothing
            self._batches = []
            return
        index, logits, probabilities, *raw = (
            torch.cat(parts).numpy() for parts in zip(*self._batches, strict=True)
        )
        self._batches = []
        order = index.argsort(kind="stable")
        datamodule = trainer.datamodule
        if isinstance(datamodule, InMemoryData):
            # The features as drawn, not as the network saw them (standardised, say).
            drawn = datamodule.predict_features[torch.from_numpy(index[order])].numpy()
            identity = datamodule.prediction_columns(index[order], drawn)
            label_names = datamodule.label_names
        else:
            identity, label_names = {"index": index[order].tolist()}, ["0", "1"]
        name = Path(self.filename)
        if trainer.world_size > 1:
            name = name.with_name(f"{name.stem}.rank{trainer.global_rank}{name.suffix}")
        # Every rank runs this hook, so the collective ``trainer.log_dir`` gives all of them rank 0's folder.
        directory = Path(trainer.log_dir or trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = unused_path(directory / name)

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as file:
                writer = csv.writer(file)
                header = [*identity, "logit", "probability", "predicted_label"] + ["raw_logit"] * len(raw)
                writer.writerow(map(spreadsheet_safe, header))
                for k, i in enumerate(order):
                    probability = probabilities[i, 0]
                    label = label_names[int(probability > self.threshold)]
                    row = [column[k] for column in identity.values()]
                    extra = [raw[0][i, 0]] if raw else []
                    cells = [*row, logits[i, 0], probability, label, *extra]
                    writer.writerow(map(spreadsheet_safe, cells))

        atomic_write(self.path, write)
