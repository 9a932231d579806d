"""Callbacks that turn a run's data and predictions into files a person reads: figures and a CSV."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from binclf.plotting import data_histogram


def run_dir(trainer: Trainer) -> Path:
    """The run's own directory (``lightning_logs/version_N``), where its config and outputs go."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file, so that a crash never leaves a half-written file under ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


class DataHistogram(Callback):
    """Logs the article's Figure 1, the training data of both classes on shared bins, when fitting starts.

    It goes to TensorBoard (``data/histogram``) and to ``data_histogram.png`` in the run directory.
    Data modules that know where their data lies expose ``feature_range``; otherwise the data's own range
    is used. Only the first feature is drawn.
    """

    def __init__(self, bins: int = 100) -> None:
        if bins < 1:
            raise ValueError(f"bins must be at least 1, got {bins}")
        self.bins = bins

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = trainer.datamodule
        train_set = getattr(datamodule, "train_set", None)
        if not trainer.is_global_zero or train_set is None:
            return
        features = train_set.features[:, 0].cpu().numpy()
        labels = train_set.targets[:, 0].cpu().numpy()
        value_range = getattr(datamodule, "feature_range", None) or (
            float(features.min()),
            float(features.max()),
        )
        figure = data_histogram(
            features[labels == 0],
            features[labels == 1],
            value_range,
            bins=self.bins,
            title=f"Training data: {len(features):,} samples",
        )
        directory = run_dir(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(
            directory / "data_histogram.png", lambda tmp: figure.savefig(tmp, format="png", dpi=100)
        )
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):
                experiment.add_figure("data/histogram", figure, global_step=trainer.global_step)


class PredictionWriter(Callback):
    """Writes ``predict`` results as CSV in the run directory, one row per input, in input order.

    Columns: ``index`` (the input's row), the features (``x``, or ``x0, x1, ...``), ``logit``,
    ``probability`` of class b, and ``predicted_label``, 1 when the probability exceeds ``threshold``.
    Predict batches are ``(features, index)``. Under DDP each rank writes ``<stem>.rank<N>.csv``.
    """

    def __init__(self, filename: str = "predictions.csv", threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
        self.filename = filename
        self.threshold = threshold
        self.path: Path | None = None
        self._batches: list[tuple[torch.Tensor, ...]] = []

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._batches = []

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: dict[str, torch.Tensor],
        batch: tuple[torch.Tensor, ...],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        features, index = batch[0], batch[1]
        self._batches.append(
            tuple(t.detach().cpu() for t in (index, features, outputs["logit"], outputs["probability"]))
        )

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        index, features, logits, probabilities = (
            torch.cat(parts).numpy() for parts in zip(*self._batches, strict=True)
        )
        self._batches = []
        order = index.argsort(kind="stable")
        feature_names = ["x"] if features.shape[1] == 1 else [f"x{i}" for i in range(features.shape[1])]
        name = Path(self.filename)
        if trainer.world_size > 1:
            name = name.with_name(f"{name.stem}.rank{trainer.global_rank}{name.suffix}")
        directory = run_dir(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / name

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as file:
                writer = csv.writer(file)
                writer.writerow(["index", *feature_names, "logit", "probability", "predicted_label"])
                # str() of a float32 is its shortest exact form: 0.003, not 0.003000000026077032.
                for i in order:
                    probability = probabilities[i, 0]
                    row = [str(v) for v in (*features[i], logits[i, 0], probability)]
                    writer.writerow([int(index[i]), *row, int(probability > self.threshold)])

        _atomic_write(self.path, write)
