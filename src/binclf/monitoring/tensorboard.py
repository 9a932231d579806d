"""What TensorBoard shows of a run: its scalars and images by step, and one HParams row per fit.

binclf's logger is Lightning's TensorBoardLogger less two things TensorBoard shows as noise: the ``epoch``
counter Lightning adds to every logged batch of scalars (a card of its own, and a column in HParams), and
the empty event file a command that logs nothing (``predict``) would leave.

The HParams row: Lightning's own would list every constructor argument as LightningCLI saved it (its own
keys, nested class paths), and every ``test`` or ``predict`` would add a row of its own with a placeholder
metric. binclf writes one row per run instead, and no experiment summary: TensorBoard then offers every
scalar of the run as a column, test metrics included once ``binclf test`` has logged them into the same
run.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.plugins.hparams import metadata, plugin_data_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from binclf.safe_io import atomic_write

_EVENT_FILES = "events.out.tfevents.*"


class RunLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger, without the ``epoch`` scalar and without empty event files.

    ``save_dir`` left out is the trainer's ``default_root_dir`` (binclf fills it in), as for Lightning's
    default logger. ``default_hp_metric`` is off: binclf writes each fit's HParams row itself.
    """

    def __init__(
        self,
        save_dir: str | None = None,
        name: str | None = "lightning_logs",
        default_hp_metric: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(save_dir or ".", name, default_hp_metric=default_hp_metric, **kwargs)
        self._files_before: set[Path] | None = None

    @property
    def experiment(self) -> SummaryWriter:
        if self._files_before is None:  # before the writer, and its event file, is created
            self._files_before = set(Path(self.log_dir).glob(_EVENT_FILES))
        return super().experiment

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        # Lightning adds the epoch to every batch of scalars it logs during fit: the step says where a point
        # lies, and an epoch counter drawn as a curve, and offered as a column in HParams, is noise.
        super().log_metrics({key: value for key, value in metrics.items() if key != "epoch"}, step)

    def finalize(self, status: str) -> None:
        super().finalize(status)
        # Lightning creates the writer, and its event file, at the start of every command; one that logged
        # nothing (``predict``) would leave a file that TensorBoard lists as a run with no data.
        if self._files_before is None:
            return
        # Imported here, not at start-up, which every command pays for.
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        # This process's own new files only (the writer puts the process id in the name): another command
        # may be writing into the same run.
        mine = f".{os.getpid()}."
        for path in set(Path(self.log_dir).glob(_EVENT_FILES)) - self._files_before:
            if mine in path.name and not any(
                e.HasField("summary") for e in EventFileLoader(str(path)).Load()
            ):
                path.unlink()


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def _value(value: Any) -> int | float | str:
    """A setting as TensorBoard's HParams tab shows it well: numbers as numbers, everything else as text
    (a boolean as ``true``/``false``, which it would show as 0.0000 and 1.0000)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, (int, float, str)) else str(value)


def hparams_row(config: Namespace, model_hparams: dict[str, Any]) -> dict[str, int | float | str]:
    """The settings that tell one fit from another, flat: the data class and every data setting, the
    network's class and sizes, the optimizer's and scheduler's class and the arguments they were given
    (none, ``False`` and zero are left out), the logit's calibration, the budget and the seed. A setting that
    is off (``None``, or ``-1`` for an unlimited budget) is left out, not shown as a placeholder."""
    data = config.data
    row: dict[str, int | float | str] = {"data": _short(data.class_path)}
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
    for budget in ("max_epochs", "max_steps"):
        if config.trainer.get(budget) not in (None, -1):
            row[f"trainer.{budget}"] = config.trainer[budget]
    if config.get("seed_everything") is not None:
        row["seed_everything"] = _value(config.seed_everything)
    return row


# The run's HParams row, in an event file of its own: TensorBoard takes a run's first session start, reading
# its event files in the order of their names, and this name comes first. So the row can be rewritten as a
# whole, when a resume changes the run's budget or a test evaluates it on other data.
HPARAMS_FILE = "events.out.tfevents.0.binclf-hparams"


def write_hparams_row(run: Path, row: dict[str, int | float | str]) -> None:
    """Make ``row`` the HParams row of the run in folder ``run`` (a whole file, replaced at once)."""
    _, session_start, _ = hparams(row, {})

    def write(tmp: Path) -> None:
        with tmp.open("wb") as file:
            records = RecordWriter(file)
            records.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
            records.write(Event(wall_time=time.time(), summary=session_start).SerializeToString())

    atomic_write(run / HPARAMS_FILE, write)


def read_hparams_row(run: Path) -> dict[str, int | float | str] | None:
    """The HParams row binclf wrote for the run in folder ``run``, or ``None`` where it wrote none. Read as
    data: each value is a protocol buffer's number, text or flag, and numbers must be finite."""
    path = run / HPARAMS_FILE
    if not path.is_file():
        return None
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for event in EventFileLoader(str(path)).Load():
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name != metadata.PLUGIN_NAME:
                continue
            start = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
            row: dict[str, int | float | str] = {}
            for name, setting in start.session_start_info.hparams.items():
                kind = setting.WhichOneof("kind")
                number = setting.number_value
                row[name] = (
                    number
                    if kind == "number_value" and math.isfinite(number)
                    else str(getattr(setting, kind or "string_value"))
                )
            return row
    return None


def tested_on(run: Path, command: str, differences: tuple[str, ...]) -> None:
    """Record in the run's HParams row the data that ``command`` (``validate``, ``test``) last evaluated it on
    where that differs from what it was trained on: ``test_data`` is then ``scale 0.2, trained on 0.8``."""
    row = read_hparams_row(run)
    if row is None:  # a run whose row binclf did not write
        return
    key = f"{command}_data"
    updated = {name: value for name, value in row.items() if name != key}
    if differences:
        updated[key] = "; ".join(differences)
    if updated != row:
        write_hparams_row(run, updated)


class LogAtTrainedStep(Callback):
    """Log a checkpoint's test or validation metrics, and its test figures, at the step it was trained to.

    In a fresh ``test`` process Lightning's step counter is 0, so the metrics would land at step 0 of a run
    whose curves end at, say, step 5530. Logged at the trained step, they sit at the end of the run's curves.
    Lightning takes a metric named ``step`` as the step to log at.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def _log(self, pl_module: LightningModule) -> None:
        pl_module.log("step", float(self.step))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(pl_module)


def logged_step(trainer: Trainer) -> int:
    """The step a command's logs belong at: the trained step of the checkpoint it evaluates in its own run,
    else the trainer's own."""
    steps = [callback.step for callback in trainer.callbacks if isinstance(callback, LogAtTrainedStep)]
    return steps[0] if steps else trainer.global_step
