"""The LightningModule: a network that outputs one logit, trained with BCEWithLogitsLoss."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import CatMetric, MaxMetric, MeanMetric, MeanSquaredError
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryCalibrationError

from binclf.calibration import Calibration, fit_calibration
from binclf.data.contract import has_oracle
from binclf.metrics import CALIBRATION_BINS, INFORMATIVE_LLR, LinearFit, PairedAccuracyGap
from binclf.workarounds import built_by_lightning_cli, once_per_point


class BinaryClassifier(LightningModule):
    """Trains any ``network`` that maps features ``[n, d]`` to logits ``[n, 1]``.

    ``forward`` returns logits; ``predict_step`` returns p(b | x) = sigmoid(logit), with the logits beside it.
    The optimizer and the optional LR scheduler are injected, so the CLI can swap them
    (``--model.optimizer Adam --model.optimizer.lr 1e-3``). The default is the article's plain SGD, lr 0.01.

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
        # the weights, and a pickled module or function would make the checkpoint unloadable with
        # ``weights_only=True``.
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

        # One metric object per stage, so that no stage's state leaks into another's.
        # A NaN loss must show as NaN, not be dropped from the mean as torchmetrics does by default.
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.val_acc = BinaryAccuracy()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # saved in checkpoints, so a resumed run keeps its best
        self.val_logits = CatMetric()  # kept only when a calibration is fitted on them
        self.val_targets = CatMetric()
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.test_acc = BinaryAccuracy()
        self.test_auroc = BinaryAUROC()
        self.test_ece = BinaryCalibrationError(n_bins=CALIBRATION_BINS)
        self.test_brier = MeanSquaredError()
        # Against the oracle, when the data module has one (synthetic data): the Bayes rule, same points.
        self.test_bayes_acc = BinaryAccuracy()
        self.test_acc_gap = PairedAccuracyGap()
        self.test_llr_rmse = MeanSquaredError(squared=False)
        self.test_llr_fit = LinearFit()
        # The network's own logit beside the calibrated one, when a calibration is applied.
        self.test_loss_raw = MeanMetric(nan_strategy="disable")
        self.test_acc_raw = BinaryAccuracy()
        self.test_ece_raw = BinaryCalibrationError(n_bins=CALIBRATION_BINS)
        self.test_llr_rmse_raw = MeanSquaredError(squared=False)
        self.test_llr_fit_raw = LinearFit()
        self._epoch_loss_sum: Tensor | None = None  # this epoch's training loss, summed over its points
        self._epoch_points = 0
        self._has_oracle = False
        # The llr error of the best estimator that saw the points this logit saw (training, plus validation
        # where a calibration was fitted there), and of one that saw the training points only.
        self._llr_floor: float | None = None
        self._llr_floor_train: float | None = None

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

    def model_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Mean loss, logits and targets of one labelled batch, from the network itself (never calibrated:
        training and the calibration fit see the network's own output); shared by every stage."""
        features, targets = batch
        logits = self.network(features)
        return self.sample_losses(logits, targets).mean(), logits, targets

    def divergence(self, stage: str, loss: Tensor, epoch: int, step: int | None = None) -> str | None:
        """Why training must stop, if ``loss`` is not finite; ``None`` if it is. The one message for a run
        and for a member of a stacked study."""
        if torch.isfinite(loss):
            return None
        where = f"epoch {epoch}" if step is None else f"epoch {epoch}, step {step}"
        return (
            f"the {stage} loss became {loss.item()} at {where}: training diverged; lower the learning rate "
            "(--model.optimizer.lr)"
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, _, _ = self.model_step(batch)
        diverged = self.divergence("training", loss, self.current_epoch, self.global_step)
        if diverged:
            # Stop at once: every later step would only spread NaN through the weights, and the checkpoints
            # saved so far (the best one included) still hold the last finite model.
            raise FloatingPointError(diverged)
        # For the epoch's mean: summed over the epoch's points here, one tensor operation that never waits
        # on the device, and handed to the metric once an epoch, since a metric update, like ``self.log``,
        # costs more than a step of a model this small. For the same reason the step's own loss is logged
        # only on the steps that the logger records (Lightning's rule: every ``log_every_n_steps`` steps).
        points = len(batch[1])
        if self._epoch_loss_sum is None:
            self._epoch_loss_sum = torch.zeros((), device=loss.device)
        self._epoch_loss_sum.add_(loss.detach(), alpha=points)
        self._epoch_points += points
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:
            self.log("loss/train_step", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        if not self._epoch_points:
            return
        mean = self._epoch_loss_sum / self._epoch_points
        self.train_loss.update(once_per_point(mean, self._epoch_points))
        self._epoch_loss_sum, self._epoch_points = None, 0
        # Lightning computes the metric (over every DDP rank's points) and resets it.
        self.log("loss/train_epoch", self.train_loss)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.update_validation(*self.model_step(batch))

    def update_validation(self, loss: Tensor, logits: Tensor, targets: Tensor) -> None:
        """Add one batch's mean loss, raw logits and targets to this validation's metrics."""
        self.val_loss.update(once_per_point(loss, len(targets)))
        self.val_acc.update(torch.sigmoid(logits), targets)
        if self.calibration != "none":
            self.val_logits.update(logits)
            self.val_targets.update(targets)

    def compute_validation(self, epoch: int, sanity_check: bool = False) -> dict[str, Tensor]:
        """Close one validation: its loss and accuracy, and, unless it is Lightning's sanity check (a couple
        of batches of an untrained model), the calibration fitted on its logits and the best accuracy so far.
        Raises ``FloatingPointError`` if the loss is not finite. The metrics are reset for the next one."""
        loss = self.val_loss.compute()
        diverged = self.divergence("validation", loss, epoch)
        if diverged:
            # Raised before the checkpoint callbacks see this epoch, so no checkpoint, the best one included,
            # ever holds a model whose loss is not finite.
            raise FloatingPointError(diverged)
        # Metric objects sync across DDP ranks when computed, so every rank sees the same values.
        values = {"loss/val": loss, "val/acc": self.val_acc.compute()}
        self.val_loss.reset()
        self.val_acc.reset()
        if self.calibration != "none":
            logits, targets = self.val_logits.compute(), self.val_targets.compute()
            self.val_logits.reset()
            self.val_targets.reset()
            if not sanity_check:
                # Fitted before the checkpoint callbacks see this epoch, so each checkpoint holds its own.
                scale, shift = fit_calibration(logits, targets, self.calibration)
                self.logit_scale.fill_(scale)
                self.logit_shift.fill_(shift)
        if sanity_check:
            return values
        self.val_acc_best.update(values["val/acc"])
        return values | {"val/acc_best": self.val_acc_best.compute()}

    def on_validation_epoch_end(self) -> None:
        values = self.compute_validation(self.current_epoch, sanity_check=self.trainer.sanity_checking)
        # The values are already the same on every rank; sync_dist only averages identical numbers.
        shown = {key: values.pop(key) for key in ("loss/val", "val/acc")}
        self.log_dict(shown, prog_bar=True, sync_dist=True)
        self.log_dict(values, sync_dist=True)

    def on_test_start(self) -> None:
        datamodule = self.trainer.datamodule
        self._has_oracle = has_oracle(datamodule)
        if not self._has_oracle:
            self._llr_floor = self._llr_floor_train = None
            return
        self._llr_floor_train = datamodule.llr_rmse_floor()[0]
        # A calibrated logit's scale was fitted on the validation split: it has seen those points too.
        self._llr_floor = datamodule.llr_rmse_floor(with_validation=self.calibration != "none")[0]

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        """Scores one test batch: ``(features, targets)``, or ``(features, targets, llr)`` for data with an
        oracle, which then also scores the Bayes rule and the logit as an llr on the same points."""
        raw_loss, raw_logits, targets = self.model_step(batch[:2])
        logits = self.calibrated(raw_logits)
        _require_finite(logits, "test", batch_idx)
        loss = self.sample_losses(logits, targets).mean()
        probabilities = torch.sigmoid(logits)
        self.test_loss.update(once_per_point(loss, len(targets)))
        self.test_acc.update(probabilities, targets)
        self.test_auroc.update(probabilities, targets)
        self.test_ece.update(probabilities, targets)
        self.test_brier.update(probabilities, targets)
        if self.calibration != "none":
            self.test_loss_raw.update(once_per_point(raw_loss, len(targets)))
            self.test_acc_raw.update(torch.sigmoid(raw_logits), targets)
            self.test_ece_raw.update(torch.sigmoid(raw_logits), targets)
        if not self._has_oracle:
            return
        llr = batch[2]
        bayes = (llr > 0).float()
        self.test_bayes_acc.update(bayes, targets)
        self.test_acc_gap.update(
            model_correct=(probabilities > 0.5) == (targets > 0.5), reference_correct=bayes == targets
        )
        # Far out in the tails the data cannot pin the llr down, so only the informative region counts.
        informative = llr.abs() <= INFORMATIVE_LLR
        self.test_llr_rmse.update(logits[informative], llr[informative])
        self.test_llr_fit.update(logits[informative], llr[informative])
        if self.calibration != "none":
            self.test_llr_rmse_raw.update(raw_logits[informative], llr[informative])
            self.test_llr_fit_raw.update(raw_logits[informative], llr[informative])

    def on_test_epoch_end(self) -> None:
        self.log_dict(
            {
                "test/loss": self.test_loss,
                "test/acc": self.test_acc,
                "test/auroc": self.test_auroc,
                "test/ece": self.test_ece,
                "test/brier": self.test_brier,
            }
        )
        if self.calibration != "none":
            self.log_dict(
                {
                    "test/loss_raw": self.test_loss_raw,
                    "test/acc_raw": self.test_acc_raw,
                    "test/ece_raw": self.test_ece_raw,
                }
            )
        if not self._has_oracle:
            return
        self.log("test/bayes_acc", self.test_bayes_acc)
        if self._llr_floor is not None:
            self.log("test/llr_floor", self._llr_floor, sync_dist=True)
        calibrated = self.calibration != "none"
        if calibrated and self._llr_floor_train is not None:
            self.log("test/llr_floor_train", self._llr_floor_train, sync_dist=True)
        floors = {"": self._llr_floor} | ({"_train_floor": self._llr_floor_train} if calibrated else {})
        self._log_llr_diagnostics("", self.test_llr_rmse, self.test_llr_fit, floors)
        if calibrated:  # the network's own logit saw the training points only
            raw_floor = {"": self._llr_floor_train}
            self._log_llr_diagnostics("_raw", self.test_llr_rmse_raw, self.test_llr_fit_raw, raw_floor)
        gap, standard_error = self.test_acc_gap.compute()
        self.test_acc_gap.reset()
        # Already combined across ranks by the metric; sync_dist only averages identical values.
        self.log_dict({"test/acc_gap": gap, "test/acc_gap_se": standard_error}, sync_dist=True)
        analytic = self.trainer.datamodule.bayes_accuracy_analytic
        if analytic is not None:
            self.log("test/bayes_acc_analytic", analytic, sync_dist=True)

    def _log_llr_diagnostics(
        self, suffix: str, rmse: MeanSquaredError, fit: LinearFit, floors: dict[str, float | None]
    ) -> None:
        """The logit against the true llr: RMSE, least-squares slope and offset, and the efficiency
        ``rmse / floor`` against each known floor (named by its key); nothing where no test point was
        scored."""
        error = rmse.compute()
        slope, offset = fit.compute()
        rmse.reset()
        fit.reset()
        if not torch.isfinite(error):  # no test point lies in the band: classes that barely overlap
            return
        # All already combined across ranks by the metrics; sync_dist only averages identical values.
        values = {
            f"test/llr_rmse{suffix}": error,
            f"test/llr_slope{suffix}": slope,
            f"test/llr_offset{suffix}": offset,
        }
        for name, floor in floors.items():
            if floor is not None:
                values[f"test/llr_efficiency{suffix}{name}"] = error / floor
        self.log_dict(values, sync_dist=True)

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        raw_logits = self.network(batch[0])
        logits = self.calibrated(raw_logits)
        _require_finite(logits, "predict", batch_idx)
        outputs = {"probability": torch.sigmoid(logits), "logit": logits}
        return outputs | ({"raw_logit": raw_logits} if self.calibration != "none" else {})

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checked before Lightning loads the weights, whose own error is a page of tensor shapes.
        stored = checkpoint.get("state_dict", {})
        expected = self.state_dict()
        for name, tensor in expected.items():
            if name not in stored:
                raise ValueError(f"the checkpoint does not fit this model: it has no {name}")
            if stored[name].shape != tensor.shape:
                raise ValueError(
                    f"the checkpoint does not fit this model: {name} is {list(stored[name].shape)} in the "
                    f"checkpoint but {list(tensor.shape)} here (were --data or --model settings changed?)"
                )
        extra = sorted(set(stored) - set(expected))
        if extra:
            raise ValueError(f"the checkpoint does not fit this model: it has {extra[0]}, which this lacks")
        for name, _ in self.named_parameters():
            if not torch.isfinite(stored[name]).all():
                raise ValueError(f"the checkpoint's {name} is not finite: the run that saved it had diverged")
        scale, shift = stored["logit_scale"], stored["logit_shift"]
        if not (torch.isfinite(scale) and torch.isfinite(shift) and scale > 0):
            raise ValueError(
                f"the checkpoint's calibration is damaged: logit_scale {scale.item()}, logit_shift "
                f"{shift.item()} (the scale must be positive, both finite)"
            )
        identity = {"none": (scale == 1 and shift == 0), "temperature": shift == 0, "affine": True}
        if not identity[self.calibration]:
            raise ValueError(
                f"the checkpoint's calibration is damaged: calibration is {self.calibration!r}, but "
                f"logit_scale is {scale.item()} and logit_shift {shift.item()}"
            )

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        # ``monitor`` matters only to schedulers that react to a metric, such as ReduceLROnPlateau.
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": self.lr_scheduler(optimizer),
                "monitor": "loss/val",
                "name": "train/lr",
            },
        }


def _require_finite(logits: Tensor, stage: str, batch_idx: int) -> None:
    """A logit that is not finite would turn every metric, and every prediction, into a tidy-looking lie."""
    if not torch.isfinite(logits).all():
        bad = int((~torch.isfinite(logits)).sum())
        raise FloatingPointError(
            f"the model's logit is not finite for {bad} point(s) of {stage} batch {batch_idx}: the inputs "
            "are far outside what it was trained on, or its weights overflow"
        )
