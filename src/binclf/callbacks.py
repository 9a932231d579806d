"""Callbacks that turn a run's data and predictions into files a person reads: figures and a CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from matplotlib.figure import Figure
from matplotlib.image import imsave
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, binary_roc

from binclf.checkpoints import atomic_write
from binclf.gaussians import LabelledData
from binclf.plotting import (
    data_histogram,
    logit_curve,
    posterior_curve,
    reliability_diagram,
    roc_curve,
    to_image,
)


def run_dir(trainer: Trainer) -> Path:
    """The run's own directory (``lightning_logs/version_N``) as the global-zero process knows it.

    Unlike ``trainer.log_dir`` this is no collective call, so rank-0-only code and code that runs after the
    DDP process group has gone can use it. Other ranks may see another version number.
    """
    logger = trainer.logger
    log_dir = getattr(logger, "log_dir", None) if logger is not None else None
    return Path(log_dir or trainer.default_root_dir)


def _logits(pl_module: LightningModule, features: Tensor, chunk: int = 65_536) -> Tensor:
    """The model's logits for every row of ``features``, in eval mode, without tracking gradients."""
    was_training = pl_module.training
    pl_module.eval()
    with torch.inference_mode():
        logits = torch.cat([pl_module(part.to(pl_module.device)).cpu() for part in features.split(chunk)])
    pl_module.train(was_training)
    return logits.float()


def _sign_changes(coordinate: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Where ``values`` crosses zero along ``coordinate``, by linear interpolation."""
    i = np.flatnonzero(np.sign(values[:-1]) != np.sign(values[1:]))
    return coordinate[i] - values[i] * (coordinate[i + 1] - coordinate[i]) / (values[i + 1] - values[i])


class DiagnosticFigures(Callback):
    """Five figures at the end of ``fit`` and of ``test``, as TensorBoard images (``figures/<name>``) and as
    ``<name>.png`` in the run directory:

    - ``data_histogram``: the article's Figure 1 (training data after fit, test data after test), with the
      Bayes boundary;
    - ``posterior``: the learned p(b | x) against the true posterior;
    - ``logit_vs_llr``: the learned logit against the true log-likelihood ratio;
    - ``roc`` and ``reliability``: on the validation set after fit, on the test set after test.

    A data module with an oracle (``log_likelihood_ratio``, ``grid``) gets all five; one without (real
    data) gets the histogram, ROC and reliability diagram. Multi-dimensional data is drawn along the data
    module's ``project`` coordinate, named on the axis.
    """

    def __init__(self, bins: int = 100, calibration_bins: int = 15, grid_points: int = 501) -> None:
        for name, value in [
            ("bins", bins),
            ("calibration_bins", calibration_bins),
            ("grid_points", grid_points),
        ]:
            if value < 2:
                raise ValueError(f"{name} must be at least 2, got {value}")
        self.bins = bins
        self.calibration_bins = calibration_bins
        self.grid_points = grid_points

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = trainer.datamodule
        train_set, val_set = getattr(datamodule, "train_set", None), getattr(datamodule, "val_set", None)
        self._draw(trainer, pl_module, "training data", train_set, "validation set", val_set)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        test_set = getattr(trainer.datamodule, "test_set", None)
        self._draw(trainer, pl_module, "test data", test_set, "test set", test_set)

    def _draw(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        data_name: str,
        data: LabelledData | None,
        eval_name: str,
        evaluation: LabelledData | None,
    ) -> None:
        """Histogram ``data``; draw ROC and reliability on ``evaluation``; the names go in the titles."""
        datamodule = trainer.datamodule
        if not trainer.is_global_zero or datamodule is None:
            return
        oracle = getattr(datamodule, "log_likelihood_ratio", None)
        grid = getattr(datamodule, "grid", None)
        project = getattr(datamodule, "project", lambda features: features[:, 0])
        xlabel = getattr(datamodule, "projection_label", "first feature")
        transform = getattr(datamodule, "transform", lambda features: features)  # what the network sees
        settings = getattr(datamodule, "description", "")
        figures: dict[str, Figure] = {}

        boundaries = None
        if oracle is not None and grid is not None:
            coordinate, points = grid(self.grid_points)
            coordinate = coordinate.numpy()
            llr = oracle(points)[:, 0].numpy()
            logit = _logits(pl_module, transform(points))[:, 0].numpy()
            boundaries = _sign_changes(coordinate, llr)
            figures["posterior"] = posterior_curve(
                coordinate, _sigmoid(logit), _sigmoid(llr), xlabel=xlabel, title=f"p(b | x): {settings}"
            )
            figures["logit_vs_llr"] = logit_curve(
                coordinate, logit, llr, xlabel=xlabel, title=f"Logit and true llr: {settings}"
            )

        if data is not None:
            coordinate = project(data.features).numpy()
            labels = data.targets[:, 0].numpy()
            value_range = getattr(datamodule, "feature_range", None) or (coordinate.min(), coordinate.max())
            figures["data_histogram"] = data_histogram(
                coordinate[labels == 0],
                coordinate[labels == 1],
                value_range,
                bins=self.bins,
                boundaries=boundaries,
                xlabel=xlabel,
                title=f"{data_name.capitalize()}: {settings}",
            )

        if evaluation is not None:
            targets = evaluation.targets[:, 0]
            probabilities = torch.sigmoid(_logits(pl_module, transform(evaluation.features)))[:, 0]
            curves = {"network": _roc(probabilities, targets)}
            if oracle is not None:
                curves["Bayes rule"] = _roc(oracle(evaluation.features)[:, 0], targets)
            figures["roc"] = roc_curve(curves, title=f"ROC, {eval_name}: {settings}")
            figures["reliability"] = reliability_diagram(
                probabilities.numpy(),
                targets.numpy(),
                bins=self.calibration_bins,
                title=f"Reliability, {eval_name}: {settings}",
            )
        self._save(trainer, figures)

    @staticmethod
    def _save(trainer: Trainer, figures: dict[str, Figure]) -> None:
        directory = run_dir(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        for name, figure in figures.items():
            image = to_image(figure)
            atomic_write(
                directory / f"{name}.png", lambda tmp, pixels=image: imsave(tmp, pixels, format="png")
            )
            for logger in trainer.loggers:
                experiment = getattr(logger, "experiment", None)
                if hasattr(experiment, "add_image"):
                    experiment.add_image(f"figures/{name}", image, trainer.global_step, dataformats="HWC")


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def _roc(scores: Tensor, targets: Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    fpr, tpr, _ = binary_roc(scores, targets.int())
    return fpr.numpy(), tpr.numpy(), float(binary_auroc(scores, targets.int()))


class PredictionWriter(Callback):
    """Writes ``predict`` results as CSV in the run directory, one row per input, in input order.

    The first columns identify each row: the data module's ``prediction_columns(index)`` where it has one
    (a table's id column, say), else ``index`` and the features (``x``, or ``x0, x1, ...``). Then come
    ``logit``, ``probability`` of class 1, and ``predicted_label``: the data module's ``label_names[1]``
    (else 1) when the probability exceeds ``threshold``. Predict batches are ``(features, index)``.
    Under DDP each rank writes ``<stem>.rank<N>.csv``.
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
        datamodule = trainer.datamodule
        if hasattr(datamodule, "prediction_columns"):
            identity = datamodule.prediction_columns(index[order])
        else:
            names = ["x"] if features.shape[1] == 1 else [f"x{i}" for i in range(features.shape[1])]
            # str() of a float32 is its shortest exact form: 0.003, not 0.003000000026077032.
            identity = {"index": index[order].tolist()}
            identity |= {name: [str(v) for v in features[order, j]] for j, name in enumerate(names)}
        label_names = getattr(datamodule, "label_names", None) or ["0", "1"]
        name = Path(self.filename)
        if trainer.world_size > 1:
            name = name.with_name(f"{name.stem}.rank{trainer.global_rank}{name.suffix}")
        # Every rank runs this hook, so the collective ``trainer.log_dir`` gives all of them rank 0's folder.
        directory = Path(trainer.log_dir or trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / name

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as file:
                writer = csv.writer(file)
                writer.writerow([*identity, "logit", "probability", "predicted_label"])
                for k, i in enumerate(order):
                    probability = probabilities[i, 0]
                    label = label_names[int(probability > self.threshold)]
                    row = [column[k] for column in identity.values()]
                    writer.writerow([*row, str(logits[i, 0]), str(probability), label])

        atomic_write(self.path, write)
