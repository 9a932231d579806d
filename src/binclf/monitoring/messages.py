"""What a command says once it has run (:func:`report`): the best checkpoint a fit leaves, the validation or
test summary, where predictions went, and the run folder; and the callbacks that show a command as it runs
(:func:`command_callbacks`)."""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelSummary, ProgressBar

from binclf.data.contract import has_oracle
from binclf.monitoring import console, run_dir
from binclf.monitoring.predictions import PredictionWriter
from binclf.monitoring.tensorboard import LogAtTrainedStep


def report(command: str, trainer: Trainer, model: LightningModule, differences: tuple[str, ...] = ()) -> None:
    """Say what ``command`` did: for ``fit`` its best checkpoint, for ``validate`` and ``test`` their
    summaries (with ``differences``, each data setting that differs from what the model was trained on),
    for ``predict`` the predictions file; then the run folder."""
    other_data = "; ".join(differences)
    if command == "fit":
        callback = trainer.checkpoint_callback
        if callback is not None and callback.best_model_path:
            score = float(callback.best_model_score)
            console.say(f"Best checkpoint: {callback.best_model_path} ({callback.monitor}={score:.5g})")
    elif command == "validate":
        console.say(console.validation_summary(trainer.callback_metrics, other_data))
    elif command == "test":
        datamodule = trainer.datamodule
        floor_missing = datamodule.llr_rmse_floor()[1] if has_oracle(datamodule) else ""
        summary = console.test_summary(
            trainer.callback_metrics, _calibration(model), floor_missing, other_data
        )
        console.say(summary)
    else:
        for callback in trainer.callbacks:
            if isinstance(callback, PredictionWriter) and callback.path is not None:
                console.say(f"Predictions: {callback.path}")
    if trainer.fast_dev_run:  # a smoke test: Lightning saves nothing, and neither does binclf
        console.say("fast_dev_run: nothing was saved")
    else:
        console.say(f"Run directory: {run_dir(trainer)}")


def _calibration(model: LightningModule) -> str:
    """The calibration a model applies to its logit, in words; empty where it applies none."""
    kind = getattr(model, "calibration", "none")
    if kind == "none":
        return ""
    scale, shift = model.logit_scale.item(), model.logit_shift.item()
    if (scale, shift) == (1.0, 0.0):  # what a calibration is before its first fit
        return f"{kind}, never fitted: no validation ran before this checkpoint"
    fitted = f"{scale:.4g} · logit" + (f" {shift:+.4g}" if kind == "affine" else "")
    return f"{kind}, fitted on the validation split: {fitted}"


def command_callbacks(
    command: str, trainer: Any, callbacks: list[Callback], model: Any, checkpoint: dict[str, Any] | None
) -> tuple[list[Callback], bool]:
    """binclf's own callbacks for a command, beside the config's ``callbacks``, and whether Lightning's
    progress bar stays on: a progress bar at a terminal, a line per epoch into a log file or a pipe; the
    network's summary; the learning rate where a scheduler changes it; and for an evaluated checkpoint, its
    metrics logged at the step it was trained to."""
    ours: list[Callback] = []
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
    if command == "fit" and getattr(model, "lr_scheduler", None) is not None:
        ours.append(LearningRateMonitor())
    if command in ("validate", "test") and checkpoint is not None:
        ours.append(LogAtTrainedStep(int(checkpoint.get("global_step", 0))))
    return ours, bar
