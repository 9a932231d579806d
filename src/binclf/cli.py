"""The ``binclf`` command: LightningCLI with the project's defaults and its checkpoint lookup."""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from binclf import console
from binclf.callbacks import DiagnosticFigures, PredictionWriter, run_dir
from binclf.checkpoints import (
    CheckpointError,
    SafeCheckpointIO,
    claim_run_dir,
    load_checkpoint,
    resolve_checkpoint,
    run_version,
)
from binclf.console import say, warn
from binclf.data import TwoGaussianDataModule  # noqa: F401  (imported so that --data finds it by name)
from binclf.module import BinaryClassifier
from binclf.networks import MLP, LogisticRegression  # noqa: F401  (--model.network finds them by name)
from binclf.tabular import TabularDataModule  # noqa: F401  (--data finds it by name)

_EVALUATING = ("validate", "test", "predict")
_ACTS_IN = {DiagnosticFigures: ("fit", "test"), PredictionWriter: ("predict",)}  # the subcommands they act in
_INTERRUPTED_EXIT = {"Ctrl-C": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report it


def _log_root(trainer: Namespace) -> Path | None:
    """Where the configured logger keeps its ``version_N`` runs, read from the config before it is built."""
    logger = trainer.get("logger")
    default_root = Path(trainer.get("default_root_dir") or ".")
    if logger is None or logger is True:  # Lightning's default: a TensorBoardLogger in default_root_dir
        return default_root / "lightning_logs"
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    init_args = logger.get("init_args") if isinstance(logger, (dict, Namespace)) else None
    if not init_args or not init_args.get("save_dir"):
        return None
    return Path(init_args["save_dir"]) / (init_args.get("name") or "lightning_logs")


class _NullProfiler(PassThroughProfiler):
    """Lightning's default profiler, which records nothing, without the generator-based context manager
    that it still builds around each of the ~50 hook calls of a training step (~1.7 µs each)."""

    _NOTHING = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.nullcontext:
        return self._NOTHING


class BinclfCLI(LightningCLI):
    """LightningCLI whose ``test``, ``validate`` and ``predict`` find the latest run's best checkpoint,
    whose ``fit --ckpt_path last`` resumes the latest run in its own folder, and whose runs each claim a
    folder of their own and never leave one behind that looks finished when they fail."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._claimed_run: Path | None = None  # the version_N folder this command created
        self._resumed_version: int | None = None
        self._created_log_root = False
        command_line = sys.argv[1:] if kwargs.get("args") is None else kwargs["args"]
        first = command_line[0] if isinstance(command_line, list) and command_line else None
        self._named_subcommand = first if first in LightningCLI.subcommands() else None
        try:
            super().__init__(*args, **kwargs)  # LightningCLI parses, builds and runs, all in here
        except BaseException as error:
            outcome = self._stopped(error)
            if outcome is error:
                raise
            raise outcome from None

    def subcommands(self) -> dict[str, set[str]]:  # an instance method here: it reads the command line
        """The subcommand that the command line names first, else all four (for ``binclf --help`` and for
        mistakes). Each subcommand's parser holds every Trainer, model and data setting and takes about
        0.1 s to build: most of LightningCLI's start-up."""
        every = LightningCLI.subcommands()
        named = self._named_subcommand
        return {named: every[named]} if named else every

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--torch_threads",
            type=int,
            default=1,
            help="torch intra-op threads. A model this small is fastest on one: more threads only add "
            "synchronisation, and slow down badly when another process is busy on a core. "
            "0 keeps torch's choice.",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.filename": "epoch={epoch}-step={step}-val_loss={val/loss:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        # last.ckpt, the latest validated epoch, from a second callback: since Lightning 2.6 ``save_last``
        # writes it only on epochs that also write a best checkpoint, so a run stopped after epochs without
        # improvement would resume from its best epoch, not its last.
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {"last_checkpoint.filename": "last", "last_checkpoint.enable_version_counter": False}
        )
        parser.link_arguments("checkpoint.dirpath", "last_checkpoint.dirpath")
        parser.add_lightning_class_args(DiagnosticFigures, "figures")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.set_defaults(
            {
                "model.network": {"class_path": "binclf.networks.MLP"},
                "data": {"class_path": "binclf.data.TwoGaussianDataModule"},
            }
        )
        parser.link_arguments("data.input_dim", "model.network.init_args.input_dim", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs["plugins"] = [*plugins, SafeCheckpointIO()]
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            kwargs["callbacks"] = [*callbacks, console.TimedProgressBar()]
        if config.get("profiler") is None:
            kwargs["profiler"] = _NullProfiler()
        trainer = super().instantiate_trainer(**kwargs)
        # Lightning calls every hook of every callback, acting or not: six per training step, ~5 µs each.
        trainer.callbacks = [
            c for c in trainer.callbacks if self.subcommand in _ACTS_IN.get(type(c), (self.subcommand,))
        ]
        return trainer

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        config = self.config[subcommand]
        if subcommand in _EVALUATING or config.get("ckpt_path"):
            # Resolved before LightningCLI reads the checkpoint's hyperparameters, so that the model is
            # rebuilt as it was trained, whatever the config says.
            checkpoint = self._find_checkpoint(config)
            load_checkpoint(checkpoint)  # a damaged or unsafe file stops here, before anything reads it
            config.ckpt_path = str(checkpoint)
            root = _log_root(config.trainer)
            if subcommand == "fit" and root is not None:
                self._resumed_version = run_version(checkpoint, root)

    def _find_checkpoint(self, config: Namespace) -> Path:
        request = config.get("ckpt_path")
        dirpath = config.checkpoint.get("dirpath")
        root = Path(dirpath) if dirpath else _log_root(config.trainer)
        if root is None and request in (None, "best", "last"):
            raise ValueError(
                "cannot find checkpoints without a logger or --checkpoint.dirpath; pass --ckpt_path FILE"
            )
        return resolve_checkpoint(request, root, in_run_dirs=not dirpath)

    def before_instantiate_classes(self) -> None:
        threads = self._get(self.config, "torch_threads")
        if threads < 0:
            raise ValueError(f"--torch_threads must be 0 or more, got {threads}")
        if threads:
            torch.set_num_threads(threads)
        self._choose_run_dir(self.config[self.subcommand].trainer)

    def _choose_run_dir(self, trainer: Namespace) -> None:
        """Point the logger at the resumed run's folder, or at a ``version_N`` claimed here for this run.

        Applies to Lightning's default logger and to a TensorBoardLogger or CSVLogger without a version;
        other loggers name their own folders.
        """
        logger = trainer.get("logger")
        default = logger is None or logger is True
        versioned = isinstance(logger, Namespace) and str(logger.get("class_path")).endswith(
            (".TensorBoardLogger", ".CSVLogger")
        )
        if not (default or (versioned and logger.init_args.get("version") is None)):
            return
        root = _log_root(trainer)
        if self._resumed_version is not None:
            version = self._resumed_version
            # The run's config.yaml is rewritten: the same settings, now with the --ckpt_path it resumed from.
            self.save_config_kwargs = {**self.save_config_kwargs, "overwrite": True}
        elif rank_zero_only.rank == 0:
            self._created_log_root = not root.exists()
            version = claim_run_dir(root)
            self._claimed_run = root / f"version_{version}"
        else:
            return  # other DDP ranks write no logs; Lightning hands them rank 0's folder
        if default:
            # What Lightning's default logger would be, but for the version.
            save_dir = trainer.get("default_root_dir") or os.getcwd()
            trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=str(save_dir), name=root.name, version=version),
            )
        else:
            logger.init_args.version = version

    def _stopped(self, error: BaseException) -> BaseException:
        """Tidy up after a command that failed or was stopped, and say what is left; returns what to raise.

        A folder this command created and that holds no checkpoint is removed: a config and a few events
        would look like a finished run. One with checkpoints is kept, since it can be resumed or tested.
        """
        trainer = getattr(self, "trainer", None)
        signal_name = None
        if isinstance(error, SIGTERMException):
            signal_name = "SIGTERM"
        elif isinstance(error, SystemExit) and error.code == 1 and getattr(trainer, "interrupted", False):
            signal_name = "Ctrl-C"  # Lightning's graceful shutdown after a KeyboardInterrupt
        run = self._claimed_run
        if run is None and self._resumed_version is not None:
            run = _log_root(self.config[self.subcommand].trainer) / f"version_{self._resumed_version}"
        checkpoints = sorted((run / "checkpoints").glob("*.ckpt")) if run is not None else []
        if run is not None and run == self._claimed_run and not checkpoints and run.is_dir():
            shutil.rmtree(run, ignore_errors=True)
            if self._created_log_root and not any(run.parent.iterdir()):
                run.parent.rmdir()
        elif checkpoints and self.subcommand == "fit":
            epoch = f" at epoch {trainer.current_epoch}" if trainer is not None else ""
            warn(f"the run stopped{epoch}; its checkpoints are kept in {run / 'checkpoints'}")
            if signal_name is not None:
                warn("resume it with the same command and --ckpt_path last")
        if signal_name is not None:
            warn(f"stopped by {signal_name}")
            return SystemExit(_INTERRUPTED_EXIT[signal_name])
        return error

    def _ckpt_path(self) -> str:
        return self.config[self.subcommand].ckpt_path

    def before_validate(self) -> None:
        say(f"Validating checkpoint {self._ckpt_path()}")

    def before_test(self) -> None:
        say(f"Testing checkpoint {self._ckpt_path()}")

    def before_predict(self) -> None:
        say(f"Predicting with checkpoint {self._ckpt_path()}")

    def after_fit(self) -> None:
        callback = self.trainer.checkpoint_callback
        if callback is not None and callback.best_model_path:
            score = callback.best_model_score
            say(f"Best checkpoint: {callback.best_model_path} ({callback.monitor}={float(score):.5g})")
        say(f"Run directory: {run_dir(self.trainer)}")

    def after_validate(self) -> None:
        say(f"Run directory: {run_dir(self.trainer)}")

    def after_test(self) -> None:
        say(console.test_summary(self.trainer.callback_metrics))
        say(f"Run directory: {run_dir(self.trainer)}")

    def after_predict(self) -> None:
        for callback in self.trainer.callbacks:
            if isinstance(callback, PredictionWriter) and callback.path is not None:
                say(f"Predictions: {callback.path}")
        say(f"Run directory: {run_dir(self.trainer)}")


def run_cli(args: list[str] | None = None) -> BinclfCLI:
    """Run one ``binclf`` command and return the CLI, whose ``trainer`` holds the results (for tests)."""
    console.quiet_inapplicable_messages()
    return BinclfCLI(
        BinaryClassifier,
        LightningDataModule,  # any data module by class_path; TwoGaussianDataModule unless the config says
        subclass_mode_data=True,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        args=args,
    )


def _reason(error: BaseException) -> str:
    """The line of ``error`` that names the problem."""
    # jsonargparse wraps a constructor's own error in its own; the innermost one names the problem.
    while not isinstance(error, CheckpointError) and (error.__cause__ or error.__context__):
        error = error.__cause__ or error.__context__
    lines = [line.strip() for line in str(error).strip().splitlines()] or [type(error).__name__]
    if lines[0].startswith("Does not validate against any of the Union subtypes"):
        # A class given by class_path: one "- reason" per type the setting allows; None is always one.
        reasons = [line[2:] for line in lines if line.startswith("- ") and "NoneType" not in line]
        return reasons[0] if reasons else lines[0]
    return lines[0]


def cli_main(args: list[str] | None = None) -> None:
    """Entry point of ``binclf`` and ``python -m binclf``; ``args`` replaces ``sys.argv[1:]``.

    Bad input (a setting, a data file, a checkpoint) ends the command with one line on stderr and exit
    status 2, a diverged run with such a line and status 1, not a traceback; ``BINCLF_DEBUG=1`` shows the
    traceback instead.
    """
    try:
        run_cli(args)
    except (ValueError, OSError, pickle.UnpicklingError, FloatingPointError) as error:
        if os.environ.get("BINCLF_DEBUG"):
            raise
        print(f"binclf: error: {_reason(error)}", file=sys.stderr)
        sys.exit(1 if isinstance(error, FloatingPointError) else 2)
    except KeyboardInterrupt:  # before or after Lightning's own handling, which covers the run itself
        print("binclf: stopped by Ctrl-C", file=sys.stderr)
        sys.exit(_INTERRUPTED_EXIT["Ctrl-C"])


def main() -> None:
    """The ``binclf`` console script (and ``python -m binclf``): :func:`cli_main`, then a quick exit.

    Tearing down an interpreter that holds torch and Lightning takes one to two seconds, spent freeing
    thousands of modules: longer than some whole commands. By then the command has closed its files and
    loggers, so once the remaining threads have finished and the ``atexit`` handlers have run (what a
    normal exit does that matters), the process ends without the teardown.
    """
    try:
        cli_main()
        code = 0
    except SystemExit as exit_:  # a message, a status or None, as ``sys.exit`` takes them
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # what a normal exit runs; CPython has no public name for it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
