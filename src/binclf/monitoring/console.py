"""Console output: what binclf prints (the summaries, the progress bar), and the Lightning messages that do
not apply here, silenced in one place. Each filter names one message; the ``binclf`` command sets them once,
as it starts (:func:`binclf.main.prepare_process`), and so do DDP's child processes, which start it again.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelSummary, TQDMProgressBar
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from binclf.llr import INFORMATIVE_LLR
from binclf.module import CALIBRATION_BINS


@rank_zero_only
def say(message: str) -> None:
    """Print once, not once per DDP process."""
    print(message)


@rank_zero_only
def warn(message: str) -> None:
    """Print once to stderr, prefixed ``binclf:``: for what a user must know after a failure."""
    print(f"binclf: {message}", file=sys.stderr)


class _Say(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        say(self.format(record))


def show_binclf_messages() -> None:
    """Print binclf's own INFO messages (a data module's, say), once per DDP run, as binclf prints the rest:
    modules log what the user should see, and only the CLI decides where it goes."""
    logger = logging.getLogger("binclf")
    logger.setLevel(logging.INFO)
    if not any(isinstance(handler, _Say) for handler in logger.handlers):
        logger.addHandler(_Say())


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_inapplicable_messages() -> None:
    """Silence the advice that does not apply here; leave every other warning alone."""
    # binclf hands LightningCLI each command's arguments, less the subcommand, which it reads itself.
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended to run from within")
    # An advertisement printed on every run (upstream Lightning-AI/pytorch-lightning#21430).
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropMessages("litlogger"))
    # A deprecation inside Lightning itself, not in this code (upstream #21326).
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
    # `test` and `predict` load a checkpoint from the fit run's folder while logging into a folder of their
    # own; that is by design here.
    warnings.filterwarnings("ignore", message=r".*The dirpath has changed from")
    # Of binclf's two ModelCheckpoints the first is the one that tracks the best model, as "best" expects.
    warnings.filterwarnings("ignore", message=r".*configured with multiple `ModelCheckpoint` callbacks")
    # loss/train_step is logged every log_every_n_steps optimizer steps across epoch boundaries, so short
    # epochs lose no points of the curve.
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval")
    # A run continued from its last.ckpt writes into its own checkpoint folder, which holds checkpoints by
    # design; a new run's folder is new.
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty")
    # binclf names the checkpoint it evaluates, and says how a fit ended, itself.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        _DropMessages(
            "Restoring states from the checkpoint",
            "Loaded model weights from the checkpoint",
            "Restored all states from the checkpoint",
            "Trainer already configured with model summary callbacks",
            "TPU available:",
            "` stopped: `",
        )
    )


class TimedProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar with one bar, and one time remaining, for the whole fit, redrawn at most every
    ``min_interval`` seconds and after each epoch's last batch; ``test`` and ``predict`` bars are
    Lightning's.

    Lightning's bar starts afresh every epoch, so its time remaining covers one epoch only, and it redraws,
    metrics and all, every ``refresh_rate`` batches; for a model this small a redraw is as costly as a
    training step, and no fixed step count suits both a small model's many steps a second and a large
    model's few. A time limit does, as tqdm's own ``mininterval`` does.
    """

    def __init__(self, min_interval: float = 0.1, process_position: int = 0) -> None:
        super().__init__(refresh_rate=1, process_position=process_position, leave=False)
        self.min_interval = min_interval
        self._drawn_at = -float("inf")

    def _due(self, batches_done: int, total: float | None) -> bool:
        now = time.monotonic()
        if batches_done != total and now - self._drawn_at < self.min_interval:
            return False
        self._drawn_at = now
        return True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        total = trainer.estimated_stepping_batches
        bar.reset(total=int(total) if math.isfinite(total) else None)
        bar.n = bar.initial = trainer.global_step  # a resumed fit starts where it stopped

    def on_train_epoch_start(self, trainer: Trainer, *_: Any) -> None:
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._due(batch_idx + 1, self.total_train_batches) and not self.train_progress_bar.disable:
            self.train_progress_bar.n = trainer.global_step
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._due(batch_idx + 1, self.val_progress_bar.total):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)


class EpochLines(Callback):
    """Instead of a progress bar, when the output is not a terminal (a log file, a pipe): one line per
    epoch with the epoch's metrics, which reads well in a file.

    The line is written once the epoch has closed, as the next one starts or training ends: Lightning
    calls the module's ``on_train_epoch_end``, which logs the epoch's mean training loss, after the
    callbacks' own.
    """

    def __init__(self) -> None:
        self._closed: tuple[int, int] | None = None  # the epoch (from 1) and step of one not yet shown

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._closed = trainer.current_epoch + 1, trainer.global_step

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._say(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._say(trainer)

    def _say(self, trainer: Trainer) -> None:
        if self._closed is None:
            return
        (epoch, step), self._closed = self._closed, None
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if "/" in key}
        shown = "  ".join(f"{key} {value:.4g}" for key, value in sorted(metrics.items()))
        say(f"epoch {epoch}/{trainer.max_epochs}  step {step}  {shown}")


class NetworkSummary(ModelSummary):
    """The model summary of the network alone: the LightningModule's other children are metric objects."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        network = pl_module.network
        parameters = sum(p.numel() for p in network.parameters() if p.requires_grad)
        say(f"Network, {parameters:,} trainable parameters:\n{network}")


def validation_summary(metrics: Mapping[str, float], other_data: str = "") -> str:
    """Every metric a validation logged, a line each; ``other_data`` says how the data it ran on differs from
    the data the model was trained on."""
    lines = [f"  {key:<22}{float(value):.5g}" for key, value in sorted(metrics.items()) if key != "step"]
    return "\n".join(["Validation summary", *_other_data(other_data), *lines])


def _other_data(other_data: str) -> list[str]:
    return [f"  on other data         {other_data}"] if other_data else []


def test_summary(metrics: Mapping[str, float], calibration: str, floor_missing: str, other_data: str) -> str:
    """The test metrics in a few lines, with the oracle's where the data had one. With a ``calibration``
    (its description, else empty), the network's own figures follow the calibrated ones as "raw";
    ``floor_missing`` says why there is no llr efficiency, and ``other_data`` how the data tested on differs
    from the data the model was trained on."""

    def value(key: str) -> float:
        return float(metrics[key])

    def line(label: str, key: str, shown: str, factor: float = 1.0) -> str:
        """One row; the raw figure beside it where one was logged."""
        text = f"  {label:<22}{shown.format(factor * value(key))}"
        if f"{key}_raw" in metrics:
            text += f"   (raw {shown.format(factor * value(f'{key}_raw'))})"
        return text

    lines = ["Test summary", *_other_data(other_data)]
    if calibration:
        lines.append(f"  calibration           {calibration}")
    lines.append(line("accuracy", "test/acc", "{:.3f} %", factor=100))
    if "test/bayes_acc" in metrics:
        limit = metrics.get("test/bayes_acc_analytic")
        analytic = f"   (analytic limit {100 * float(limit):.3f} %)" if limit is not None else ""
        lines.append(f"  Bayes rule, same data {100 * value('test/bayes_acc'):.3f} %{analytic}")
        gap, error = 100 * value("test/acc_gap"), 100 * value("test/acc_gap_se")
        lines.append(f"  gap to Bayes          {gap:+.3f} ± {error:.3f} pp")
    lines.append(f"  AUROC                 {value('test/auroc'):.5f}")
    lines.append(line(f"ECE ({CALIBRATION_BINS} bins)", "test/ece", "{:.4f}"))
    lines.append(f"  Brier score           {value('test/brier'):.5f}")
    if "test/llr_rmse" in metrics:
        lines.append(line(f"llr RMSE, |llr| ≤ {INFORMATIVE_LLR:g}", "test/llr_rmse", "{:.3f}"))
        lines.append(line("llr slope", "test/llr_slope", "{:.3f}"))
        lines.append(line("llr offset", "test/llr_offset", "{:+.3f}"))
        if "test/llr_floor" in metrics:
            lines += _efficiency_lines(metrics)
        else:
            lines.append(f"  efficiency            none: {floor_missing}")
    elif "test/bayes_acc" in metrics:
        lines.append(f"  llr RMSE              none: no test point lies where |llr| ≤ {INFORMATIVE_LLR:g}")
    return "\n".join(lines)


def _efficiency_lines(metrics: Mapping[str, float]) -> list[str]:
    """The llr floor and the efficiency against it. A calibrated logit has seen the validation points too
    (its scale was fitted there), so its floor counts them; the training-only figures stand beside it, and
    the network's raw logit, which saw the training points only, is measured against that floor."""
    floor, efficiency = float(metrics["test/llr_floor"]), float(metrics["test/llr_efficiency"])
    if "test/llr_floor_train" not in metrics:
        lines = [f"  llr RMSE floor        {floor:.3f}", f"  efficiency            {efficiency:.2f}"]
    else:
        train_floor = float(metrics["test/llr_floor_train"])
        lines = [
            f"  llr RMSE floor        {floor:.3f}   (training and validation points; training only "
            f"{train_floor:.3f})",
            f"  efficiency            {efficiency:.2f}   "
            f"(against the training-only floor {float(metrics['test/llr_efficiency_train_floor']):.2f}; "
            f"raw logit {float(metrics['test/llr_efficiency_raw']):.2f})",
        ]
    if efficiency < 1:
        lines.append(
            "  below 1: the floor is the expected error of the best unbiased estimator over draws of the "
            "data it saw; this logit, shrunk towards 0 by stopping early, did better on this draw"
        )
    return lines
