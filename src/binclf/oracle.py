"""What binclf scores in a test beyond what every binary classifier wants: callbacks that the CLI attaches
only where they apply, so that the module people copy carries none of it.

- :class:`OracleScores`, for data that knows its densities (:func:`binclf.data.contract.has_oracle`): the
  Bayes rule on the same test points and the paired gap to it, and the logit read as a log-likelihood ratio:
  its RMSE, slope and offset against the true llr, and its efficiency against the floor the data allows.
- :class:`RawLogitScores`, for a calibrated model: the network's own logit scored beside the calibrated one,
  as ``test/<metric>_raw``.

Both read what :meth:`binclf.module.BinaryClassifier.test_step` returns (the logits, calibrated and raw, and
the targets); the oracle also reads the true llr that a data module with an oracle adds to its test batches.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torchmetrics import MeanMetric, MeanSquaredError
from torchmetrics.classification import BinaryAccuracy

from binclf.data.contract import has_oracle
from binclf.llr import INFORMATIVE_LLR
from binclf.metrics import LinearFit, PairedAccuracyGap
from binclf.workarounds import once_per_point


def scoring_callbacks(datamodule: Any, model: Any) -> list[Callback]:
    """The callbacks that score a test of ``model`` on ``datamodule`` beyond the model's own metrics."""
    callbacks: list[Callback] = [OracleScores()] if has_oracle(datamodule) else []
    if getattr(model, "calibration", "none") != "none":
        callbacks.append(RawLogitScores())
    return callbacks


class _LlrError(nn.Module):
    """A logit against the true llr, where the data can pin it down: RMSE, and slope and offset."""

    def __init__(self) -> None:
        super().__init__()
        self.rmse = MeanSquaredError(squared=False)
        self.fit = LinearFit()

    def update(self, logits: Tensor, llr: Tensor) -> None:
        # Far out in the tails nearly every sample has one label: only the informative region counts.
        informative = llr.abs() <= INFORMATIVE_LLR
        self.rmse.update(logits[informative], llr[informative])
        self.fit.update(logits[informative], llr[informative])

    def compute(self, suffix: str, floors: dict[str, float | None]) -> dict[str, Tensor]:
        """``test/llr_rmse``, ``_slope``, ``_offset`` and ``_efficiency`` against each known floor (named by
        its key), each name ending in ``suffix``; nothing where no test point was scored."""
        error = self.rmse.compute()
        slope, offset = self.fit.compute()
        if not torch.isfinite(error):  # no test point lies in the band: classes that barely overlap
            return {}
        values = {f"test/llr_rmse{suffix}": error, f"test/llr_slope{suffix}": slope}
        values[f"test/llr_offset{suffix}"] = offset
        for name, floor in floors.items():
            if floor is not None:
                values[f"test/llr_efficiency{suffix}{name}"] = error / floor
        return values


class OracleScores(Callback):
    """The test scored against the oracle, on the same points: ``test/bayes_acc``, ``test/acc_gap`` (Bayes
    rule minus network) and its standard error, ``test/bayes_acc_analytic`` where a closed form exists, and
    the logit as an llr (``test/llr_*``). A calibrated logit's scale was fitted on the validation split, so
    its floor counts those points too (``test/llr_floor``); the training-only floor stands beside it
    (``test/llr_floor_train``), and the raw logit, which saw the training points only, is measured by it.
    """

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.calibrated = pl_module.calibration != "none"
        self.metrics = nn.ModuleDict(
            {
                "bayes_acc": BinaryAccuracy(),
                "gap": PairedAccuracyGap(),
                "llr": _LlrError(),
                "raw": _LlrError(),
            }
        ).to(pl_module.device)
        datamodule = trainer.datamodule
        self.floor_train = datamodule.llr_rmse_floor()[0]
        self.floor = datamodule.llr_rmse_floor(with_validation=self.calibrated)[0]

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: dict[str, Tensor],
        batch: tuple[Tensor, ...],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        llr, targets = batch[2], outputs["targets"]
        bayes = (llr > 0).float()
        self.metrics["bayes_acc"].update(bayes, targets)
        correct = (torch.sigmoid(outputs["logits"]) > 0.5) == (targets > 0.5)
        self.metrics["gap"].update(model_correct=correct, reference_correct=bayes == targets)
        self.metrics["llr"].update(outputs["logits"], llr)
        if self.calibrated:
            self.metrics["raw"].update(outputs["raw_logits"], llr)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        gap, standard_error = self.metrics["gap"].compute()
        values = {"test/bayes_acc": self.metrics["bayes_acc"].compute()}
        values |= {"test/acc_gap": gap, "test/acc_gap_se": standard_error}
        floors = {"": self.floor}
        if self.floor is not None:
            values["test/llr_floor"] = torch.tensor(self.floor)
        if self.calibrated and self.floor_train is not None:
            values["test/llr_floor_train"] = torch.tensor(self.floor_train)
            floors["_train_floor"] = self.floor_train
        values |= self.metrics["llr"].compute("", floors)
        if self.calibrated:
            values |= self.metrics["raw"].compute("_raw", {"": self.floor_train})
        analytic = trainer.datamodule.bayes_accuracy_analytic
        if analytic is not None:
            values["test/bayes_acc_analytic"] = torch.tensor(analytic)
        # Each already the same on every DDP rank (the metrics sync when computed).
        pl_module.log_dict(values, sync_dist=True)


class RawLogitScores(Callback):
    """A calibrated model's own logit, scored as the calibrated one is: ``test/loss_raw`` and each of the
    module's ``test_scores`` with ``_raw`` after its name."""

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.loss = MeanMetric(nan_strategy="disable").to(pl_module.device)
        self.scores = pl_module.test_scores.clone(postfix="_raw").to(pl_module.device)
        self.scores.reset()

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: dict[str, Tensor],
        batch: tuple[Tensor, ...],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        raw_logits, targets = outputs["raw_logits"], outputs["targets"]
        loss = pl_module.sample_losses(raw_logits, targets).mean()  # the module's own loss
        self.loss.update(once_per_point(loss, len(targets)))
        self.scores.update(torch.sigmoid(raw_logits), targets)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.log_dict({"test/loss_raw": self.loss.compute(), **self.scores.compute()}, sync_dist=True)
