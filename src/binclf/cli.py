"""The ``binclf`` command: LightningCLI with the project's defaults and its checkpoint lookup."""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import pickle
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace, set_parsing_settings
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from binclf import console
from binclf.callbacks import DiagnosticFigures, PredictionWriter, run_dir
from binclf.checkpoints import (
    CheckpointError,
    SafeCheckpointIO,
    changed_data_settings,
    check_hyperparameters,
    claim_run_dir,
    load_checkpoint,
    resolve_checkpoint,
    run_version,
)
from binclf.console import say, warn
from binclf.data import TwoGaussianDataModule
from binclf.interrupts import EXIT_STATUS, Terminated
from binclf.module import BinaryClassifier
from binclf.networks import MLP, LogisticRegression
from binclf.tabular import TabularDataModule

_EVALUATING = ("validate", "test", "predict")
# Errors that bad input raises; each ends the command with one line, not a traceback.
_USER_ERRORS = (ValueError, OSError, pickle.UnpicklingError, FloatingPointError, MisconfigurationException)
_ACTS_IN = {DiagnosticFigures: ("fit", "test"), PredictionWriter: ("predict",)}  # the subcommands they act in


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


def _class_paths(value: Any) -> Iterator[str]:
    """Every ``class_path`` in a parsed config, at any depth."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        if isinstance(value.get("class_path"), str):
            yield value["class_path"]
        for item in value.values():
            yield from _class_paths(item)
    elif isinstance(value, list):
        for item in value:
            yield from _class_paths(item)


def trusted_classes(config: Namespace) -> set[str]:
    """The classes that a checkpoint's hyperparameters may name: binclf's networks and data modules,
    torch's optimizers and LR schedulers, and the classes this command's own config names."""
    own = [MLP, LogisticRegression, TwoGaussianDataModule, TabularDataModule]
    optimizers = [c for c in vars(torch.optim).values() if isinstance(c, type) and issubclass(c, Optimizer)]
    schedulers = [
        c
        for c in vars(torch.optim.lr_scheduler).values()
        if isinstance(c, type) and issubclass(c, (LRScheduler, ReduceLROnPlateau))
    ]
    trusted = {f"{c.__module__}.{c.__qualname__}" for c in [*own, *optimizers, *schedulers]}
    # jsonargparse writes torch's classes by their public names: torch.optim.SGD, not torch.optim.sgd.SGD.
    trusted |= {f"torch.optim.{c.__name__}" for c in optimizers}
    trusted |= {f"torch.optim.lr_scheduler.{c.__name__}" for c in schedulers}
    return trusted | set(_class_paths(config))


def _check_trainer_settings(trainer: Namespace) -> None:
    """Trainer settings that Lightning would accept and then fail on with a traceback, or with a message
    that does not say which setting is wrong."""
    every = trainer.get("check_val_every_n_epoch")
    if every is not None and every < 1:
        raise ValueError(f"trainer.check_val_every_n_epoch must be at least 1 (or null), got {every}")
    accelerator = trainer.get("accelerator")
    if accelerator in ("gpu", "cuda") and not (
        torch.cuda.is_available() or torch.backends.mps.is_available()
    ):
        raise ValueError(
            f"trainer.accelerator={accelerator}, but torch finds no GPU on this machine: use "
            "--trainer.accelerator cpu, or auto to take a GPU only where there is one"
        )
    if trainer.get("logger") is False:
        config = Path(trainer.get("default_root_dir") or ".") / "config.yaml"
        if config.exists():
            raise ValueError(
                f"with trainer.logger=false each command saves its config as {config}, and one is there "
                "already: give this command its own --trainer.default_root_dir, or remove that file"
            )


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
        self._checkpoint: dict[str, Any] | None = None  # the checked contents of --ckpt_path, if any
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
        parser.add_argument(
            "--resume_with_other_data",
            type=bool,
            default=False,
            help="fit --ckpt_path: train on data settings other than those the checkpoint was trained with "
            "(refused otherwise, since it is usually a mistake)",
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
            # Resolved and checked before LightningCLI reads the checkpoint's hyperparameters, so that the
            # model is rebuilt as it was trained, whatever the config says, and a file from someone else
            # can neither run code nor pass for a checkpoint.
            checkpoint = self._find_checkpoint(config)
            self._checkpoint = load_checkpoint(checkpoint)
            check_hyperparameters(
                self._checkpoint.get("hyper_parameters", {}),
                checkpoint,
                settings=set(inspect.signature(self.model_class).parameters),
                trusted_classes=trusted_classes(config),
            )
            config.ckpt_path = str(checkpoint)
            if subcommand == "fit":
                self._check_resume(checkpoint, config)

    def _check_resume(self, checkpoint: Path, config: Namespace) -> None:
        """A run continues in its own folder only from its ``last.ckpt``: from any other of its checkpoints
        (``best``, an epoch file) it would rewind that run and overwrite its ``last.ckpt``, so it becomes a
        new run. Training on other data than the checkpoint's is refused unless asked for."""
        root = _log_root(config.trainer)
        if root is not None and checkpoint.name == "last.ckpt":
            self._resumed_version = run_version(checkpoint, root)
        elif root is not None and run_version(checkpoint, root) is not None:
            say(f"Starting a new run from {checkpoint}: only a run's last.ckpt continues in its own folder")
        if config.resume_with_other_data:
            return
        changed = changed_data_settings(self._checkpoint, config.data.as_dict())
        if changed:
            raise ValueError(
                f"--ckpt_path {checkpoint} was trained with other data settings ({'; '.join(changed)}): "
                "pass the settings it was trained with, or --resume_with_other_data true to train it on "
                "this data"
            )

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
        trainer = self.config[self.subcommand].trainer
        _check_trainer_settings(trainer)
        self._choose_run_dir(trainer)

    def after_instantiate_classes(self) -> None:
        # Lightning restores a data module's state (a table's label names and statistics, say) from the
        # checkpoint only after ``setup`` has built the splits; restored here, nothing is built without it.
        state = self._checkpoint.get(type(self.datamodule).__qualname__) if self._checkpoint else None
        if state is not None:
            self.datamodule.load_state_dict(state)

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
            # config.yaml stays the record of how the run began; each resume saves its own config beside it.
            run = root / f"version_{version}"
            count = next(n for n in itertools.count(1) if not (run / f"config.resumed-{n}.yaml").exists())
            self.save_config_kwargs = {
                **self.save_config_kwargs,
                "config_filename": f"config.resumed-{count}.yaml",
            }
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
        subcommand = self.config["subcommand"] if hasattr(self, "config") else None
        if isinstance(
            error, (Terminated, SIGTERMException)
        ):  # ours, or Lightning's when ours is not installed
            signal_name = "SIGTERM"
        elif isinstance(error, KeyboardInterrupt) or (
            isinstance(error, SystemExit) and error.code == 1 and getattr(trainer, "interrupted", False)
        ):
            signal_name = "Ctrl-C"  # raw, or after Lightning's graceful shutdown, which exits with 1
        run = self._claimed_run
        if run is None and self._resumed_version is not None:
            run = _log_root(self.config[subcommand].trainer) / f"version_{self._resumed_version}"
        checkpoints = sorted((run / "checkpoints").glob("*.ckpt")) if run is not None else []
        if run is not None and run == self._claimed_run and not checkpoints and run.is_dir():
            shutil.rmtree(run, ignore_errors=True)
            if self._created_log_root and not any(run.parent.iterdir()):
                run.parent.rmdir()
        elif checkpoints and subcommand == "fit":
            epoch = f" at epoch {trainer.current_epoch}" if trainer is not None else ""
            warn(f"the run stopped{epoch}; its checkpoints are kept in {run / 'checkpoints'}")
            if signal_name is not None:
                warn("resume it with the same command and --ckpt_path last")
        if signal_name is not None:
            warn(f"stopped by {signal_name}")
            return SystemExit(EXIT_STATUS[signal_name])
        if isinstance(error, OSError) and error.errno and error.filename is None and run is not None:
            return OSError(error.errno, f"{error.strerror or error} (while writing the run {run})")
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
    # A second layer under check_hyperparameters, for every value parsed: jsonargparse keeps a class spec
    # that stands where any value is accepted as data instead of building it, and refuses import paths on
    # its denylist (os, subprocess, builtins.eval, ...) instead of only warning.
    set_parsing_settings(instantiate_subclass_spec_in_any=False, import_path_denylist=[])
    return BinclfCLI(
        BinaryClassifier,
        LightningDataModule,  # any data module by class_path; TwoGaussianDataModule unless the config says
        subclass_mode_data=True,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        args=args,
    )


def error_message(error: BaseException) -> str:
    """The line of ``error`` that names the problem."""
    # jsonargparse wraps a constructor's own error in its own; the innermost one names the problem, unless
    # an error was raised on purpose in place of the one it handled (``raise ... from None``).
    while not isinstance(error, CheckpointError):
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None:
            break
        error = inner
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
    except (
        ValueError,
        OSError,
        pickle.UnpicklingError,
        FloatingPointError,
        MisconfigurationException,
    ) as error:
        if os.environ.get("BINCLF_DEBUG"):
            raise
        print(f"binclf: error: {error_message(error)}", file=sys.stderr)
        sys.exit(1 if isinstance(error, FloatingPointError) else 2)
    except KeyboardInterrupt:  # before or after Lightning's own handling, which covers the run itself
        print("binclf: stopped by Ctrl-C", file=sys.stderr)
        sys.exit(EXIT_STATUS["Ctrl-C"])
