"""What TensorBoard's HParams tab shows of a run: one row per fit, with its settings under readable names.

Lightning's own row would list every constructor argument as LightningCLI saved it (``_instantiator``,
nested class paths), and every ``test`` or ``predict`` would add a row of its own with a placeholder metric.
binclf writes one row per fit instead, and no experiment summary: TensorBoard then offers every scalar of
the run as a column, test metrics included once ``binclf test`` has logged them into the same run.
"""

from __future__ import annotations

from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def _value(value: Any) -> bool | int | float | str:
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def hparams_row(config: Namespace, model_hparams: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """The settings that tell one fit from another, flat: the data class and every data setting, the
    network's class and sizes, the optimizer's and scheduler's class and the arguments they were given
    (none, ``False`` and zero are left out), the budget and the seeds."""
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
    row["trainer.max_epochs"] = config.trainer.max_epochs if config.trainer.max_epochs is not None else -1
    row["trainer.max_steps"] = config.trainer.max_steps
    row["seed_everything"] = _value(config.seed_everything)
    return row


def write_hparams_row(trainer: Trainer, row: dict[str, bool | int | float | str]) -> None:
    """Start the run's HParams session with ``row``, in every TensorBoard logger of the trainer."""
    _, session_start, _ = hparams(row, {})
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
            logger.experiment.file_writer.add_summary(session_start)
