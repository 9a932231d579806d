"""What a command says on the console about its outcome: the checkpoint it evaluates, the best checkpoint a
fit leaves, the test summary, where predictions went, and the run folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelSummary, ProgressBar
from lightning.pytorch.trainer.states import TrainerFn

from binclf.data.contract import has_oracle, what_it_misses
from binclf.monitoring import console
from binclf.monitoring.predictions import PredictionWriter
from binclf.monitoring.tensorboard import LogAtTrainedStep
from binclf.runs import run_dir


class CommandMessages(Callback):
    """Says what a ``fit``, ``validate``, ``test`` or ``predict`` did; ``checkpoint`` is the one evaluated."""

    def __init__(self, checkpoint: Path | None = None) -> None:
        self.checkpoint = checkpoint
        self._said_what_data_misses = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        missing = what_it_misses(trainer.datamodule)
        if missing is not None and not self._said_what_data_misses:
            console.warn(missing)
            self._said_what_data_misses = True

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._say_checkpoint(trainer, "Validating checkpoint")

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._say_checkpoint(trainer, "Testing checkpoint")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._say_checkpoint(trainer, "Predicting with checkpoint")

    def _say_checkpoint(self, trainer: Trainer, doing: str) -> None:
        checkpoint = self.checkpoint or trainer.ckpt_path  # the command's, or one given to the trainer
        if checkpoint:
            console.say(f"{doing} {checkpoint}")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        callback = trainer.checkpoint_callback
        if callback is not None and callback.best_model_path:
            score = float(callback.best_model_score)
            console.say(f"Best checkpoint: {callback.best_model_path} ({callback.monitor}={score:.5g})")
        self._say_run_directory(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._say_run_directory(trainer)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        calibration = ""
        if pl_module.calibration != "none":
            scale, shift = pl_module.logit_scale.item(), pl_module.logit_shift.item()
            fitted = f"{scale:.4g} · logit" + (f" {shift:+.4g}" if pl_module.calibration == "affine" else "")
            calibration = f"{pl_module.calibration}, fitted on the validation split: {fitted}"
            if (scale, shift) == (1.0, 0.0):  # what a calibration is before its first fit
                calibration = (
                    f"{pl_module.calibration}, never fitted: no validation ran before this checkpoint"
                )
        datamodule = trainer.datamodule
        floor_missing = datamodule.llr_rmse_floor()[1] if has_oracle(datamodule) else ""
        console.say(console.test_summary(trainer.callback_metrics, calibration, floor_missing))
        self._say_run_directory(trainer)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for callback in trainer.callbacks:
            if isinstance(callback, PredictionWriter) and callback.path is not None:
                console.say(f"Predictions: {callback.path}")
        self._say_run_directory(trainer)

    @staticmethod
    def _say_run_directory(trainer: Trainer) -> None:
        if trainer.fast_dev_run:  # a smoke test: Lightning saves nothing, and neither does binclf
            console.say("fast_dev_run: nothing was saved")
        else:
            console.say(f"Run directory: {run_dir(trainer)}")


def command_callbacks(
    command: str | None,
    trainer: Any,
    callbacks: list[Callback],
    scheduled: bool,
    checkpoint: tuple[Path, dict[str, Any]] | None,
    in_its_run: bool,
) -> tuple[list[Callback], bool]:
    """binclf's own callbacks for a command, beside the config's ``callbacks``, and whether Lightning's
    progress bar stays on: the messages; a progress bar at a terminal, a line per epoch into a log file or a
    pipe; the network's summary; the learning rate where a scheduler changes it; and for a checkpoint
    evaluated in its own run (``in_its_run``), its metrics logged at the step it was trained to."""
    ours: list[Callback] = [CommandMessages(checkpoint[0] if checkpoint else None)]
    bar = trainer.get("enable_progress_bar") is not False
    if bar and not any(isinstance(c, ProgressBar) for c in callbacks):
        if sys.stdout.isatty():
            ours.append(console.TimedProgressBar())
        else:  # a line per epoch, not a bar redrawn a hundred times
            ours.append(console.EpochLines())
            bar = False
    if trainer.get("enable_model_summary") is not False and not any(
        isinstance(c, ModelSummary) for c in callbacks
    ):
        ours.append(console.NetworkSummary())
    if scheduled:
        ours.append(LearningRateMonitor())
    if command in ("validate", "test") and checkpoint is not None and in_its_run:
        contents = checkpoint[1]
        ours.append(LogAtTrainedStep(int(contents.get("global_step", 0))))
    return ours, bar
