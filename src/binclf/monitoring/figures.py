"""The diagnostic figures: a run's data and the learned function, against the oracle where there is one."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from matplotlib.image import imsave
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, binary_roc

from binclf.data import LabelledData
from binclf.data.contract import InMemoryData, has_oracle
from binclf.module import CALIBRATION_BINS
from binclf.monitoring import run_dir
from binclf.monitoring.plotting import (
    data_histogram,
    logit_curve,
    posterior_curve,
    reliability_diagram,
    roc_curve,
    to_image,
    training_loss,
)
from binclf.monitoring.tensorboard import logged_step
from binclf.safe_io import atomic_write


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


# The article's Figure 1 and Figure 2, as fit draws them. TensorBoard shows groups of tags in name order:
# the loss curves (``loss/``) first, then these (``paper/``), then the others (``plots/``).
_THE_ARTICLES = {"data_histogram": "paper/fig1_data_histogram", "training_loss": "paper/fig2_training_loss"}


class DiagnosticFigures(Callback):
    """Figures at the end of ``fit`` and of ``test``, as TensorBoard images and PNG files in the run
    directory: ``plots/<name>`` and ``<name>.png`` after fit (the article's two figures as
    ``paper/fig1_data_histogram`` and ``paper/fig2_training_loss``, which TensorBoard shows right after the
    loss curves), ``plots/test_<name>`` and ``test_<name>.png`` after test, so that a run tested after it was
    fitted keeps both:

    - ``training_loss`` (after fit): the article's Figure 2, the loss of every optimizer step on a log axis;
    - ``data_histogram``: the article's Figure 1 (training data after fit, test data after test), with the
      Bayes boundary;
    - ``posterior``: the learned p(b | x) against the true posterior;
    - ``logit_vs_llr``: the learned logit against the true log-likelihood ratio;
    - ``roc`` and ``reliability``: on the validation set after fit, on the test set after test.

    A data module with an oracle (``has_oracle``) gets all five; one without (real data) gets the
    histogram, ROC and reliability diagram. Multi-dimensional data is drawn along the data module's
    ``project`` coordinate, named on the axis. A data module that is not
    :class:`~binclf.data.contract.InMemoryData` gets the training loss only: the others draw its splits.
    """

    def __init__(
        self, bins: int = 100, calibration_bins: int = CALIBRATION_BINS, grid_points: int = 501
    ) -> None:
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
        # The loss of every training step, kept in checkpoints so that a resumed run draws its whole curve.
        # Plain numbers, not tensors: a small tensor kept from every step pins the memory freed around it, and
        # the process grows by about a batch of activations a step.
        self._steps: list[int] = []
        self._losses: list[float] = []

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self._steps.append(trainer.global_step)
        self._losses.append(loss.item())  # no extra wait on a GPU: the training step has read the loss

    def state_dict(self) -> dict[str, Tensor]:
        if not self._losses:
            return {}
        return {"steps": torch.tensor(self._steps), "losses": torch.tensor(self._losses)}

    def load_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """The training loss so far, from a checkpoint that may be anyone's: checked before it is drawn."""
        if not state_dict:
            return
        steps, losses = state_dict.get("steps"), state_dict.get("losses")
        ok = (
            isinstance(steps, Tensor)
            and isinstance(losses, Tensor)
            and steps.ndim == losses.ndim == 1
            and len(steps) == len(losses)
            and not steps.is_floating_point()
            and bool((steps >= 0).all())
            and losses.is_floating_point()
            and bool(torch.isfinite(losses).all())
        )
        if not ok:
            raise ValueError(
                "the checkpoint's DiagnosticFigures state is damaged: steps and losses do not match"
            )
        self._steps, self._losses = steps.tolist(), losses.tolist()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run:  # a smoke test, which saves nothing
            return
        figures = {}
        if self._losses and trainer.is_global_zero:
            state = self.state_dict()
            title = "Training loss (the article's Figure 2)"
            steps, losses = state["steps"].numpy(), state["losses"].numpy()
            figures["training_loss"] = training_loss(steps, losses, title=title)
        datamodule = trainer.datamodule
        if isinstance(datamodule, InMemoryData):
            train, val = datamodule.train_set, datamodule.val_set
            figures |= self._draw(trainer, pl_module, "training data", train, "validation set", val)
        self._save(trainer, figures, prefix="")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run:
            return
        datamodule = trainer.datamodule
        if isinstance(datamodule, InMemoryData):
            test = datamodule.test_set
            figures = self._draw(trainer, pl_module, "test data", test, "test set", test)
            self._save(trainer, figures, prefix="test_")

    def _draw(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        data_name: str,
        data: LabelledData | None,
        eval_name: str,
        evaluation: LabelledData | None,
    ) -> dict[str, Figure]:
        """Histogram ``data``; draw ROC and reliability on ``evaluation``; the names go in the titles."""
        if not trainer.is_global_zero:
            return {}
        datamodule: InMemoryData = trainer.datamodule
        xlabel, settings = datamodule.projection_label, datamodule.description
        figures: dict[str, Figure] = {}

        boundaries = None
        if has_oracle(datamodule):
            coordinate, points = datamodule.grid(self.grid_points)
            coordinate = coordinate.numpy()
            llr = datamodule.log_likelihood_ratio(points)[:, 0].numpy()
            logit = _logits(pl_module, datamodule.transform(points))[:, 0].numpy()
            boundaries = _sign_changes(coordinate, llr)
            figures["posterior"] = posterior_curve(
                coordinate, _sigmoid(logit), _sigmoid(llr), xlabel=xlabel, title=f"p(b | x): {settings}"
            )
            figures["logit_vs_llr"] = logit_curve(
                coordinate, logit, llr, xlabel=xlabel, title=f"Logit and true llr: {settings}"
            )

        if data is not None:
            coordinate = datamodule.project(data.features).numpy()
            labels = data.targets[:, 0].numpy()
            value_range = datamodule.feature_range or (coordinate.min(), coordinate.max())
            figures["data_histogram"] = data_histogram(
                coordinate[labels == 0],
                coordinate[labels == 1],
                value_range,
                bins=self.bins,
                boundaries=boundaries,
                class_names=tuple(datamodule.class_names),
                xlabel=xlabel,
                title=f"{data_name.capitalize()}: {settings}",
            )

        if evaluation is not None:
            targets = evaluation.targets[:, 0]
            probabilities = torch.sigmoid(_logits(pl_module, datamodule.transform(evaluation.features)))[:, 0]
            curves = {"network": _roc(probabilities, targets)}
            if has_oracle(datamodule):
                curves["Bayes rule"] = _roc(
                    datamodule.log_likelihood_ratio(evaluation.features)[:, 0], targets
                )
            figures["roc"] = roc_curve(curves, title=f"ROC, {eval_name}: {settings}")
            figures["reliability"] = reliability_diagram(
                probabilities.numpy(),
                targets.numpy(),
                bins=self.calibration_bins,
                positive=datamodule.class_names[1],
                title=f"Reliability, {eval_name}: {settings}",
            )
        return figures

    @staticmethod
    def _save(trainer: Trainer, figures: dict[str, Figure], prefix: str) -> None:
        if not figures:
            return
        step = logged_step(trainer)  # a test's figures beside its scalars, at the step it was trained to
        directory = run_dir(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        for name, figure in figures.items():
            image = to_image(figure)
            path = directory / f"{prefix}{name}.png"
            atomic_write(path, lambda tmp, pixels=image: imsave(tmp, pixels, format="png"))
            tag = _THE_ARTICLES.get(name, f"plots/{name}") if not prefix else f"plots/{prefix}{name}"
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(tag, image, step, dataformats="HWC")


def _sigmoid(values: np.ndarray) -> np.ndarray:
    # 1 / (1 + e^-v) written so that no logit, however large, overflows
    return np.exp(-np.logaddexp(0.0, -values))


def _roc(scores: Tensor, targets: Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    fpr, tpr, _ = binary_roc(scores, targets.int())
    return fpr.numpy(), tpr.numpy(), float(binary_auroc(scores, targets.int()))
