"""The LightningModule: a network that outputs one logit, trained with BCEWithLogitsLoss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, MeanSquaredError
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryCalibrationError

from binclf.data import InMemoryDataModule
from binclf.metrics import CALIBRATION_BINS, INFORMATIVE_LLR, PairedAccuracyGap
from binclf.workarounds import built_by_lightning_cli


class BinaryClassifier(LightningModule):
    """Trains any ``network`` that maps features ``[n, d]`` to logits ``[n, 1]``.

    ``forward`` returns logits; ``predict_step`` returns p(b | x) = sigmoid(logit), with the logits beside it.
    The optimizer and the optional LR scheduler are injected, so the CLI can swap them
    (``--model.optimizer Adam --model.optimizer.lr 1e-3``). The default is the article's plain SGD, lr 0.01.
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: OptimizerCallable = lambda params: torch.optim.SGD(params, lr=0.01),
        lr_scheduler: LRSchedulerCallable | None = None,
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
        self.criterion = nn.BCEWithLogitsLoss()

        # One metric object per stage, so that no stage's state leaks into another's.
        # A NaN loss must show as NaN, not be dropped from the mean as torchmetrics does by default.
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.val_acc = BinaryAccuracy()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # saved in checkpoints, so a resumed run keeps its best
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.test_acc = BinaryAccuracy()
        self.test_auroc = BinaryAUROC()
        self.test_ece = BinaryCalibrationError(n_bins=CALIBRATION_BINS)
        self.test_brier = MeanSquaredError()
        # Against the oracle, when the data module has one (synthetic data): the Bayes rule, same points.
        self.test_bayes_acc = BinaryAccuracy()
        self.test_acc_gap = PairedAccuracyGap()
        self.test_llr_rmse = MeanSquaredError(squared=False)
        self._oracle: Callable[[Tensor], Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[n, 1]``: the inference path."""
        return self.network(x)

    def model_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Loss, logits and targets of one labelled batch; shared by every stage."""
        features, targets = batch
        logits = self(features)
        return self.criterion(logits, targets), logits, targets

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, _, _ = self.model_step(batch)
        if not torch.isfinite(loss):
            # Stop at once: every later step would only spread NaN through the weights, and the checkpoints
            # saved so far (the best one included) still hold the last finite model.
            raise FloatingPointError(
                f"the training loss became {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step}: training diverged; lower the learning rate (--model.optimizer.lr)"
            )
        # ``self.log`` is costly next to a step of a model this small, so call it only on the steps that the
        # logger records (Lightning's own rule: every ``log_every_n_steps`` optimizer steps).
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, logits, targets = self.model_step(batch)
        self.val_loss.update(loss, weight=len(targets))
        self.val_acc.update(torch.sigmoid(logits), targets)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # computed once: ``self.log`` below reuses the result
        if not torch.isfinite(loss):
            # Raised before the checkpoint callbacks see this epoch, so no checkpoint, the best one included,
            # ever holds a model whose loss is not finite.
            raise FloatingPointError(
                f"the validation loss became {loss.item()} at epoch {self.current_epoch}: training "
                "diverged; lower the learning rate (--model.optimizer.lr)"
            )
        # Metric objects sync across DDP ranks by themselves, and Lightning resets them after logging.
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/acc", self.val_acc, prog_bar=True)
        if self.trainer.sanity_checking:  # a couple of batches of an untrained model is no "best"
            return
        self.val_acc_best.update(self.val_acc.compute())
        best = self.val_acc_best.compute()
        # The value is already the same on every rank; sync_dist only averages identical numbers.
        self.log("val/acc_best", best, sync_dist=True)
        self.log("hp_metric", best, sync_dist=True)  # TensorBoard's HPARAMS tab ranks runs by this key

    def on_test_start(self) -> None:
        datamodule = self.trainer.datamodule
        oracle = isinstance(datamodule, InMemoryDataModule) and datamodule.has_oracle
        self._oracle = datamodule.log_likelihood_ratio if oracle else None

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, logits, targets = self.model_step(batch)
        probabilities = torch.sigmoid(logits)
        self.test_loss.update(loss, weight=len(targets))
        self.test_acc.update(probabilities, targets)
        self.test_auroc.update(probabilities, targets)
        self.test_ece.update(probabilities, targets)
        self.test_brier.update(probabilities, targets)
        if self._oracle is None:
            return
        llr = self._oracle(batch[0])
        bayes = (llr > 0).float()
        self.test_bayes_acc.update(bayes, targets)
        self.test_acc_gap.update(
            model_correct=(probabilities > 0.5) == (targets > 0.5), reference_correct=bayes == targets
        )
        # Far out in the tails the data cannot pin the llr down, so only the informative region counts.
        informative = llr.abs() <= INFORMATIVE_LLR
        self.test_llr_rmse.update(logits[informative], llr[informative])

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
        if self._oracle is None:
            return
        self.log_dict({"test/bayes_acc": self.test_bayes_acc, "test/llr_rmse": self.test_llr_rmse})
        gap, standard_error = self.test_acc_gap.compute()
        self.test_acc_gap.reset()
        # Already combined across ranks by the metric; sync_dist only averages identical values.
        self.log_dict({"test/acc_gap": gap, "test/acc_gap_se": standard_error}, sync_dist=True)
        analytic = self.trainer.datamodule.bayes_accuracy_analytic
        if analytic is not None:
            self.log("test/bayes_acc_analytic", analytic, sync_dist=True)

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        logits = self(batch[0])
        return {"probability": torch.sigmoid(logits), "logit": logits}

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

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        # ``monitor`` matters only to schedulers that react to a metric, such as ReduceLROnPlateau.
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.lr_scheduler(optimizer), "monitor": "val/loss"},
        }
