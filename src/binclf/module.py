"""The LightningModule: a network that outputs one logit, trained with BCEWithLogitsLoss."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import CatMetric, MaxMetric, MeanMetric, MeanSquaredError, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryCalibrationError

from binclf.calibration import Calibration, fit_calibration
from binclf.workarounds import built_by_lightning_cli, once_per_point

CALIBRATION_BINS = 15  # test/ece bins the probabilities into this many equal-width bins, as figures do


class BinaryClassifier(LightningModule):
    """Trains any ``network`` that maps features ``[n, d]`` to logits ``[n, 1]``.

    ``forward`` returns logits; ``predict_step`` returns p(b | x) = sigmoid(logit), with the logits beside it.
    The optimizer and the optional LR scheduler are injected (default: the article's plain SGD, lr 0.01).

    ``calibration`` (``temperature`` or ``affine``, see :mod:`binclf.calibration`) fits ``logit_scale`` and
    ``logit_shift`` on the validation split after every validation, so each checkpoint carries the
    calibration of its own weights; ``forward`` (test, predict, figures) applies it, training does not.
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: OptimizerCallable = lambda params: torch.optim.SGD(params, lr=0.01),
        lr_scheduler: LRSchedulerCallable | None = None,
        calibration: Calibration = "none",
    ) -> None:
        super().__init__()
        # LightningCLI hands over the parsed config of these arguments (class_path and init_args): plain data
        # that lets a checkpoint rebuild them. Objects passed from Python are left out: the state_dict holds
        # the weights, and a pickled module or function would make the checkpoint unloadable as plain data.
        objects = None if built_by_lightning_cli() else ["network", "optimizer", "lr_scheduler"]
        self.save_hyperparameters(ignore=objects)
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.calibration = calibration
        # Per sample, so that one definition serves every stage and the stacked study, which needs each
        # member's loss over its own rows; change the loss here (pos_weight, say) and all of them follow.
        self.criterion = nn.BCEWithLogitsLoss(reduction="none")
        # Plain tensors in the state_dict, so a checkpoint carries its calibration as data.
        self.register_buffer("logit_scale", torch.tensor(1.0))
        self.register_buffer("logit_shift", torch.tensor(0.0))

        # Scores of p(b | x) against the labels, a collection per stage: add a metric there and the stage logs
        # it. A NaN loss must show as NaN, not be dropped from the mean as torchmetrics does by default.
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.val_scores = MetricCollection({"acc": BinaryAccuracy()}, prefix="val/")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # saved in checkpoints, so a resumed run keeps its best
        self.val_logits = CatMetric()  # kept only when a calibration is fitted on them
        self.val_targets = CatMetric()
        self.test_loss = MeanMetric(nan_strategy="disable")
        ece = BinaryCalibrationError(n_bins=CALIBRATION_BINS)
        scores = {"acc": BinaryAccuracy(), "auroc": BinaryAUROC(), "ece": ece, "brier": MeanSquaredError()}
        self.test_scores = MetricCollection(scores, prefix="test/")
        self._epoch_loss_sum: Tensor | None = None  # this epoch's training loss, summed over its points
        self._epoch_points = 0

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[n, 1]``, calibrated where a calibration was fitted: the inference path."""
        return self.calibrated(self.network(x))

    def calibrated(self, logits: Tensor) -> Tensor:
        """The network's logits with the fitted calibration applied (the identity unless one was fitted)."""
        return self.logit_scale * logits + self.logit_shift

    def sample_losses(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The loss of each sample, shaped as ``logits``: the one definition of the loss, for every stage of
        a run and for every member of a stacked study."""
        return self.criterion(logits, targets)

    def model_step(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor]:
        """Mean loss, logits and targets of a batch ``(features, targets, ...)``, from the network itself
        (never calibrated: training and the calibration fit see its own output); shared by every stage."""
        features, targets = batch[0], batch[1]
        logits = self.network(features)
        return self.sample_losses(logits, targets).mean(), logits, targets

    def divergence(self, stage: str, loss: Tensor, epoch: int, step: int | None = None) -> str | None:
        """Why training must stop, if ``loss`` is not finite; ``None`` if it is. The one message for a run
        and for a member of a stacked study."""
        if torch.isfinite(loss):
            return None
        where = f"epoch {epoch}" if step is None else f"epoch {epoch}, step {step}"
        return f"the {stage} loss became {loss.item()} at {where}: training diverged; lower the learning rate"

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, _, targets = self.model_step(batch)
        diverged = self.divergence("training", loss, self.current_epoch, self.global_step)
        if diverged:  # every later step would spread NaN; the checkpoints so far hold finite models
            raise FloatingPointError(diverged)
        # The epoch's mean, summed here on the device and handed to the metric once an epoch: a metric update,
        # like ``self.log``, costs more than a step of a model this small. So the step's own loss is logged
        # only on the steps the logger records (Lightning's rule: every ``log_every_n_steps``).
        if self._epoch_loss_sum is None:
            self._epoch_loss_sum = torch.zeros((), device=loss.device)
        self._epoch_loss_sum.add_(loss.detach(), alpha=len(targets))
        self._epoch_points += len(targets)
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:
            self.log("loss/train_step", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        if self._epoch_points:
            mean = self._epoch_loss_sum / self._epoch_points
            self.train_loss.update(once_per_point(mean, self._epoch_points))
            self._epoch_loss_sum, self._epoch_points = None, 0
            self.log("loss/train_epoch", self.train_loss)  # computed over every DDP rank's points, and reset

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.update_validation(*self.model_step(batch))

    def update_validation(self, loss: Tensor, logits: Tensor, targets: Tensor) -> None:
        """Add one batch's mean loss, raw logits and targets to this validation's metrics."""
        self.val_loss.update(once_per_point(loss, len(targets)))
        self.val_scores.update(torch.sigmoid(logits), targets)
        if self.calibration != "none":
            self.val_logits.update(logits)
            self.val_targets.update(targets)

    def compute_validation(self, epoch: int, sanity_check: bool = False) -> dict[str, Tensor]:
        """Close one validation: its loss and scores and, unless it is Lightning's sanity check (a couple of
        batches of an untrained model), the calibration fitted on its logits and the best accuracy so far.
        Raises ``FloatingPointError`` if the loss is not finite, before any checkpoint sees this epoch."""
        loss = self.val_loss.compute()
        diverged = self.divergence("validation", loss, epoch)
        if diverged:
            raise FloatingPointError(diverged)
        values = {"loss/val": loss, **self.val_scores.compute()}  # synced across DDP ranks
        if sanity_check:
            return values
        if self.calibration != "none":  # fitted before the checkpoint callbacks see this epoch
            logits, targets = self.val_logits.compute(), self.val_targets.compute()
            scale, shift = fit_calibration(logits, targets, self.calibration)
            self.logit_scale.fill_(scale)
            self.logit_shift.fill_(shift)
        self.val_acc_best.update(values["val/acc"])
        return values | {"val/acc_best": self.val_acc_best.compute()}

    def on_validation_epoch_end(self) -> None:
        values = self.compute_validation(self.current_epoch, sanity_check=self.trainer.sanity_checking)
        self.log("loss/val", self.val_loss, prog_bar=True)  # Lightning resets what it logs
        self.log_dict(self.val_scores, prog_bar=True)
        if "val/acc_best" in values:
            self.log("val/acc_best", values["val/acc_best"], sync_dist=True)  # the same on every rank
        self.val_logits.reset()
        self.val_targets.reset()

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        """Scores one test batch ``(features, targets, ...)``; returns the logits, calibrated and raw, and the
        targets, for callbacks that score more (binclf's oracle, where the data has one)."""
        _, raw_logits, targets = self.model_step(batch)
        logits = self.calibrated(raw_logits)
        _require_finite(logits, "test", batch_idx)
        loss = self.sample_losses(logits, targets).mean()
        self.test_loss.update(once_per_point(loss, len(targets)))
        self.test_scores.update(torch.sigmoid(logits), targets)
        return {"logits": logits, "raw_logits": raw_logits, "targets": targets}

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss)
        self.log_dict(self.test_scores)

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        raw_logits = self.network(batch[0])
        logits = self.calibrated(raw_logits)
        _require_finite(logits, "predict", batch_idx)
        outputs = {"probability": torch.sigmoid(logits), "logit": logits}
        return outputs | ({"raw_logit": raw_logits} if self.calibration != "none" else {})

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        # ``monitor`` matters only to schedulers that react to a metric, such as ReduceLROnPlateau.
        scheduler = {"scheduler": self.lr_scheduler(optimizer), "monitor": "loss/val", "name": "train/lr"}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def _require_finite(logits: Tensor, stage: str, batch_idx: int) -> None:
    """A logit that is not finite would turn every metric, and every prediction, into a tidy-looking lie."""
    if bad := int((~torch.isfinite(logits)).sum()):
        raise FloatingPointError(
            f"the model's logit is not finite for {bad} point(s) of {stage} batch {batch_idx}: the inputs "
            "are far outside what it was trained on, or its weights overflow"
        )
