"""What TensorBoard's HParams tab shows of a run: one row per fit, with its settings under readable names.

Lightning's own row would list every constructor argument as LightningCLI saved it (``_instantiator``,
nested class paths), and every ``test`` or ``predict`` would add a row of its own with a placeholder metric.
binclf writes one row per fit instead, and no experiment summary: TensorBoard then offers every scalar of
the run as a column, test metrics included once ``binclf test`` has logged them into the same run.
"""

from __future__ import annotations

from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torch.utils.tensorboard.summary import hparams


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def _value(value: Any) -> bool | int | float | str:
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def hparams_row(config: Namespace, model_hparams: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """The settings that tell one fit from another, flat: the data class and every data setting, the
    network's class and sizes, the optimizer's and scheduler's class and the arguments they were given
    (none, ``False`` and zero are left out), the logit's calibration, the budget and the seeds."""
    data = config.data
    row: dict[str, bool | int | float | str] = {"data": _short(data.class_path)}
    row |= {f"data.{key}": _value(value) for key, value in data.init_args.items() if value is not None}
    for part in ("network", "optimizer", "lr_scheduler"):
        spec = model_hparams.get(part)
        row[part] = _short(spec["class_path"]) if spec else "none"
        arguments = (spec or {}).get("init_args", {})
        row |= {
            f"{part}.{key}": _value(value)
            for key, value in arguments.items()
            if value not in (None, False, 0)
        }
    row["calibration"] = model_hparams.get("calibration", "none")
    row["trainer.max_epochs"] = config.trainer.max_epochs if config.trainer.max_epochs is not None else -1
    row["trainer.max_steps"] = config.trainer.max_steps
    row["seed_everything"] = _value(config.seed_everything)
    return row


def write_hparams_row(loggers: list[Logger], row: dict[str, bool | int | float | str]) -> None:
    """Start the run's HParams session with ``row``, in each of ``loggers`` that is a TensorBoard logger."""
    _, session_start, _ = hparams(row, {})
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.file_writer.add_summary(session_start)


class LogAtTrainedStep(Callback):
    """Log a checkpoint's test or validation metrics at the step and epoch it was trained to.

    In a fresh ``test`` process Lightning's step counter is 0, so the metrics would land at step 0 of a run
    whose curves end at, say, step 5530; TensorBoard takes a step that goes back for a restarted run and
    drops that tag's later points (Lightning's ``epoch`` curve, here). Logged at the trained step, the test
    metrics sit at the end of the run's curves and nothing is dropped. Lightning takes a metric named
    ``step`` as the step to log at.
    """

    def __init__(self, step: int, epoch: int) -> None:
        self.step = step
        self.epoch = epoch

    def _log(self, pl_module: LightningModule) -> None:
        pl_module.log_dict({"step": float(self.step), "epoch": float(self.epoch)})

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(pl_module)
