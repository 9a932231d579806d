"""LightningCLI, wired for binclf: its defaults, a run folder per fit, and checkpoints found and checked.

How a command ends (one-line errors, exit statuses, signals) is in :mod:`binclf.command`; run folders and
checkpoint lookup in :mod:`binclf.runs`; checkpoint safety in :mod:`binclf.safe_io`.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import re
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any, NoReturn

import torch
from jsonargparse import Namespace, set_parsing_settings
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    ProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from binclf import __version__
from binclf.command import EXIT_STATUS, Terminated, check_config_files
from binclf.data import InMemoryDataModule
from binclf.from_checkpoint import (
    ClassSettings,
    build_model,
    checked_model_settings,
    classes_named_in,
    differences,
)
from binclf.module import BinaryClassifier
from binclf.monitoring import console
from binclf.monitoring.console import say, warn
from binclf.monitoring.figures import DiagnosticFigures
from binclf.monitoring.predictions import PredictionWriter
from binclf.monitoring.tensorboard import LogAtTrainedStep, hparams_row, write_hparams_row
from binclf.runs import RunFolder, changed_data_settings, find_checkpoint, log_root, run_dir
from binclf.safe_io import CheckpointError, SafeCheckpointIO, load_checkpoint
from binclf.workarounds import NullProfiler

_EVALUATING = ("validate", "test", "predict")


class BinclfArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, with help a person can read: where a setting takes any ``torch.nn.Module``,
    jsonargparse lists every subclass torch has imported, hundreds of lines; here binclf's own are listed,
    and the rest counted."""

    def format_help(self) -> str:
        def shorten(match: re.Match) -> str:
            names = re.sub(r"\s+", "", match.group(1)).split(",")
            own = [name for name in names if name.startswith(("binclf.networks.", "binclf.data."))]
            if len(names) <= 12:
                return match.group(0)
            return f"known subclasses: {', '.join(own)}, and {len(names) - len(own)} more)"

        return re.sub(r"known\s+subclasses:\s+([^)]*)\)", shorten, super().format_help())

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """A setting that does not parse ends the command with one line naming it, like any bad input
        (:func:`binclf.command.error_message`), instead of the whole usage, which ``--help`` shows."""
        raise ArgumentError(None, message) from ex


class BinclfCLI(LightningCLI):
    """LightningCLI whose ``test``, ``validate`` and ``predict`` find the latest run's best checkpoint,
    whose ``fit --ckpt_path last`` resumes the latest run in its own folder, whose checkpoints are checked
    before anything they name is built, and whose runs each claim a folder of their own and never leave
    one behind that looks finished when they fail."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._command_line = list(sys.argv[1:] if kwargs.get("args") is None else kwargs["args"])
        self.run_folder = RunFolder(None)  # worked out from the config once it is parsed
        self.checkpoint: tuple[Path, dict[str, Any]] | None = None  # --ckpt_path and its checked contents
        self.model_settings: dict[str, Any] = {}  # the checkpoint's, checked (binclf.from_checkpoint)
        try:
            super().__init__(*args, **kwargs)  # LightningCLI parses, builds and runs, all in here
        except BaseException as error:
            outcome = self._stopped(error)
            if outcome is error:
                raise
            raise outcome from None

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

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        config = self.config[subcommand]
        self.run_folder = RunFolder(log_root(config.trainer))
        if subcommand not in _EVALUATING and not config.get("ckpt_path"):
            return
        # Found, read once and checked as plain data. No parser sees the checkpoint's model settings, and
        # nothing they name is imported: evaluation builds the model from them in Python
        # (instantiate_classes); a resume must have the config's own.
        dirpath = config.checkpoint.get("dirpath")
        path = find_checkpoint(config.ckpt_path, self.run_folder.root, dirpath, data=config.data.as_dict())
        contents = load_checkpoint(path)
        own_classes = classes_named_in(config.as_dict())
        self.model_settings = checked_model_settings(
            contents.get("hyper_parameters", {}), path, self.model_class, own_classes
        )
        self.checkpoint = path, contents
        if subcommand == "fit":
            self._check_resume(path, config, own_classes)
        elif (version := self.run_folder.version_of(path)) is not None:
            self.run_folder.resume(version)  # one fitted run, one TensorBoard run: its tests log into it
        # LightningCLI would read the checkpoint's hyperparameters into its parser (``_parse_ckpt_path``);
        # without a ckpt_path it skips that. Restored in before_instantiate_classes.
        self.config[subcommand].ckpt_path = None

    def _check_resume(self, path: Path, config: Namespace, own_classes: dict[str, type]) -> None:
        """A run continues in its own folder only from its ``last.ckpt``: from any other of its checkpoints
        (``best``, an epoch file) it would rewind that run and overwrite its ``last.ckpt``, so it becomes a
        new run. Other model settings than the checkpoint's are refused; training on other data than the
        checkpoint's is refused unless asked for."""
        configured = {}
        for key, value in config.model.as_dict().items():
            with contextlib.suppress(CheckpointError):  # a setting the checkpoint could not hold either
                configured |= checked_model_settings({key: value}, path, self.model_class, own_classes)
        changed_model = differences(self.model_settings, configured)
        if changed_model:
            raise ValueError(
                f"--ckpt_path {path} was trained with other model settings ({'; '.join(changed_model)}): "
                "pass the settings it was trained with"
            )
        version = self.run_folder.version_of(path)
        if version is not None and path.name == "last.ckpt":
            self.run_folder.resume(version)
            console.expect_existing_checkpoints()
        elif version is not None:
            say(f"Starting a new run from {path}: only a run's last.ckpt continues in its own folder")
        changed = changed_data_settings(self.checkpoint[1], config.data.as_dict())
        if changed and not config.resume_with_other_data:
            raise ValueError(
                f"--ckpt_path {path} was trained with other data settings ({'; '.join(changed)}): "
                "pass the settings it was trained with, or --resume_with_other_data true to train it on "
                "this data"
            )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config  # no subcommand: run=False
        if self.checkpoint is not None:
            config.ckpt_path = str(self.checkpoint[0])
        if config.torch_threads < 0:
            raise ValueError(f"--torch_threads must be 0 or more, got {config.torch_threads}")
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        _check_trainer_settings(config.trainer)
        calibration = config.model.get("calibration", "none")
        if (
            self.subcommand == "fit"
            and calibration != "none"
            and config.trainer.get("limit_val_batches") == 0
        ):
            raise ValueError(
                f"model.calibration={calibration} is fitted on the validation split, but "
                "trainer.limit_val_batches is 0: let validation run, or use model.calibration=none"
            )
        # The run's saved config keeps the logger as given, without the version this run claims below, so
        # that ``-c lightning_logs/version_N/config.yaml`` repeats the run, or tests it, like any config.
        self._logger_as_given = copy.deepcopy(config.trainer.get("logger"))
        if not config.trainer.get("fast_dev_run"):  # which writes no logs: no folder to claim
            self._point_logger_at_run_folder(config.trainer)

    def _point_logger_at_run_folder(self, trainer: Namespace) -> None:
        """Log into the resumed run's folder, or into a ``version_N`` claimed here for this run.

        Applies to Lightning's default logger and to a TensorBoardLogger or CSVLogger without a version;
        other loggers name their own folders.
        """
        logger = trainer.get("logger")
        default = logger is None or logger is True
        if isinstance(logger, Namespace) and str(logger.get("class_path")).endswith(".TensorBoardLogger"):
            logger.init_args.default_hp_metric = False  # binclf writes the HParams row itself, see before_fit
        versioned = isinstance(logger, Namespace) and str(logger.get("class_path")).endswith(
            (".TensorBoardLogger", ".CSVLogger")
        )
        unversioned = default or (versioned and logger.init_args.get("version") is None)
        if self.run_folder.root is None or not unversioned:
            return
        if self.run_folder.version is not None:  # a resumed run, or the run of the checkpoint evaluated
            name = self.run_folder.config_name("resumed" if self.subcommand == "fit" else self.subcommand)
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": name}
        elif rank_zero_only.rank == 0:
            self.run_folder.claim()
        else:
            return  # other DDP ranks write no logs; Lightning hands them rank 0's folder
        if default:
            # What Lightning's default logger would be, but for the version.
            save_dir = trainer.get("default_root_dir") or os.getcwd()
            trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(
                    save_dir=str(save_dir),
                    name=self.run_folder.root.name,
                    version=self.run_folder.version,
                    default_hp_metric=False,
                ),
            )
        else:
            logger.init_args.version = self.run_folder.version

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self.checkpoint is None or self.subcommand == "fit":
            return
        # Evaluated as the checkpoint was trained: its model, built in Python from its checked settings,
        # and from the config's for any setting it does not give. The run's saved config records them.
        path, contents = self.checkpoint
        names = inspect.signature(self.model_class).parameters
        defaults = {name: getattr(self.model, name) for name in names if hasattr(self.model, name)}
        self.model = build_model(
            self.model_settings, contents["state_dict"], self.model_class, defaults, path
        )
        model_config = self.config[self.subcommand].model
        for key, value in self.model_settings.items():
            if isinstance(value, ClassSettings):
                value = Namespace(class_path=value.name, init_args=Namespace(**value.arguments))
            model_config[key] = value

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs["plugins"] = [*plugins, SafeCheckpointIO(checked=self.checkpoint)]
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        ours: list[Callback] = []
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            if sys.stdout.isatty():
                ours.append(console.TimedProgressBar())
            else:  # a log file or a pipe: a line per epoch, not a bar redrawn a hundred times
                ours.append(console.EpochLines())
                kwargs["enable_progress_bar"] = False
        if config.get("enable_model_summary") is not False and not any(
            isinstance(c, ModelSummary) for c in callbacks
        ):
            ours.append(console.NetworkSummary())
        if self.subcommand == "fit" and self.config["fit"].model.lr_scheduler is not None:
            ours.append(LearningRateMonitor())
        if self.subcommand in ("validate", "test") and self.run_folder.version is not None:
            contents = self.checkpoint[1]
            ours.append(LogAtTrainedStep(int(contents.get("global_step", 0)), int(contents.get("epoch", 0))))
        kwargs["callbacks"] = [*callbacks, *ours]
        if config.get("profiler") is None:
            kwargs["profiler"] = NullProfiler()
        return super().instantiate_trainer(**kwargs)

    def after_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        config.trainer.logger = self._logger_as_given  # the trainer's logger is built; see above
        # Lightning restores a data module's state (a table's label names and statistics, say) from the
        # checkpoint only after ``setup`` has built the splits; restored here, nothing is built without it.
        if self.checkpoint is None:
            return
        path, contents = self.checkpoint
        key = type(self.datamodule).__qualname__
        if key in contents:
            self.datamodule.load_state_dict(contents[key])
        elif self.datamodule.state_dict():
            # Without it the network would see its inputs scaled as this config says, not as it was trained.
            raise CheckpointError(
                f"checkpoint {path} has no {key} state: it does not say what its network was trained on "
                "(how its inputs were scaled, its label names)"
            )

    def _stopped(self, error: BaseException) -> BaseException:
        """Tidy up after a command that failed or was stopped, and say what is left; returns what to raise.

        A folder this command created and that holds no checkpoint is removed: a config and a few events
        would look like a finished run. One with checkpoints is kept, since it can be resumed or tested.
        """
        trainer = getattr(self, "trainer", None)
        signal_name = None
        if isinstance(error, (Terminated, SIGTERMException)):  # Lightning's where ours is not installed
            signal_name = "SIGTERM"
        elif isinstance(error, KeyboardInterrupt) or (
            isinstance(error, SystemExit) and error.code == 1 and getattr(trainer, "interrupted", False)
        ):
            signal_name = "Ctrl-C"  # raw, or after Lightning's graceful shutdown, which exits with 1
        run = self.run_folder
        fitting = hasattr(self, "config") and self.config.get("subcommand") == "fit"
        if not run.remove_if_unfinished() and run.checkpoints() and fitting:
            epoch = f" at epoch {trainer.current_epoch}" if trainer is not None else ""
            warn(f"the run stopped{epoch}; its checkpoints are kept in {run.path / 'checkpoints'}")
            if signal_name is not None:
                warn("resume it with the same command and --ckpt_path last")
        if signal_name is not None:
            warn(f"stopped by {signal_name}")
            return SystemExit(EXIT_STATUS[signal_name])
        if isinstance(error, OSError) and error.errno and error.filename is None and run.path is not None:
            return OSError(error.errno, f"{error.strerror or error} (while writing the run {run.path})")
        return error

    def before_fit(self) -> None:
        if self.trainer.is_global_zero:
            write_hparams_row(self.trainer.loggers, hparams_row(self.config["fit"], self.model.hparams))

    def before_validate(self) -> None:
        say(f"Validating checkpoint {self.checkpoint[0]}")
        self._binclf_summary_instead_of_lightnings_table()

    def before_test(self) -> None:
        say(f"Testing checkpoint {self.checkpoint[0]}")
        self._binclf_summary_instead_of_lightnings_table()

    def _binclf_summary_instead_of_lightnings_table(self) -> None:
        """binclf prints its own summary after ``test``; Lightning's table of raw values comes back with
        ``--verbose true``."""
        if not any(arg.startswith("--verbose") for arg in self._command_line):
            self.config_init[self.subcommand].verbose = False

    def before_predict(self) -> None:
        say(f"Predicting with checkpoint {self.checkpoint[0]}")

    def _say_run_directory(self) -> None:
        if self.trainer.fast_dev_run:  # a smoke test: Lightning saves nothing, and neither does binclf
            say("fast_dev_run: nothing was saved")
        else:
            say(f"Run directory: {run_dir(self.trainer)}")

    def after_fit(self) -> None:
        callback = self.trainer.checkpoint_callback
        if callback is not None and callback.best_model_path:
            score = callback.best_model_score
            say(f"Best checkpoint: {callback.best_model_path} ({callback.monitor}={float(score):.5g})")
        self._say_run_directory()

    def after_validate(self) -> None:
        self._say_run_directory()

    def after_test(self) -> None:
        model, datamodule = self.model, self.datamodule
        calibration = ""
        if model.calibration != "none":
            scale, shift = model.logit_scale.item(), model.logit_shift.item()
            fitted = f"{scale:.4g} · logit" + (f" {shift:+.4g}" if model.calibration == "affine" else "")
            calibration = f"{model.calibration}, fitted on the validation split: {fitted}"
            if (scale, shift) == (1.0, 0.0):  # what a calibration is before its first fit
                calibration = f"{model.calibration}, never fitted: no validation ran before this checkpoint"
        oracle = isinstance(datamodule, InMemoryDataModule) and datamodule.has_oracle
        floor_missing = datamodule.llr_rmse_floor()[1] if oracle else ""
        say(console.test_summary(self.trainer.callback_metrics, calibration, floor_missing))
        self._say_run_directory()

    def after_predict(self) -> None:
        for callback in self.trainer.callbacks:
            if isinstance(callback, PredictionWriter) and callback.path is not None:
                say(f"Predictions: {callback.path}")
        self._say_run_directory()


def _check_trainer_settings(trainer: Namespace) -> None:
    """Trainer settings that Lightning would accept and then fail on with a traceback, or with a message
    that does not say which setting is wrong."""
    every = trainer.get("check_val_every_n_epoch")
    if every is not None and every < 1:
        raise ValueError(f"trainer.check_val_every_n_epoch must be at least 1 (or null), got {every}")
    for key in ("max_epochs", "max_steps"):
        if trainer.get(key) == 0:
            raise ValueError(f"trainer.{key} is 0: there would be nothing to train")
    accelerator = trainer.get("accelerator")
    gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    if accelerator in ("gpu", "cuda") and not gpu:
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


def run_cli(args: list[str] | None = None, *, run: bool = True) -> BinclfCLI:
    """Run one ``binclf`` command and return the CLI, whose ``trainer`` holds the results (for tests).

    With ``run=False``, ``args`` are a ``fit``'s arguments without the subcommand, and the CLI builds its
    model, data module and trainer as ``binclf fit`` would, and stops there: the stacked study builds its
    members from it (and from its ``parser``).
    """
    console.quiet_inapplicable_messages()
    console.show_binclf_messages()
    check_config_files(sys.argv[1:] if args is None else args)
    # For the user's own config files and arguments (checkpoints never reach the parser): jsonargparse
    # keeps a class spec that stands where any value is accepted as data instead of building it, and refuses
    # import paths on its denylist (os, subprocess, builtins.eval, ...) instead of only warning.
    set_parsing_settings(instantiate_subclass_spec_in_any=False, import_path_denylist=[])
    return BinclfCLI(
        BinaryClassifier,
        LightningDataModule,  # any data module by class_path; TwoGaussianDataModule unless the config says
        subclass_mode_data=True,
        seed_everything_default=0,
        # Without a config, `binclf fit` is the article's experiment: the other defaults already are.
        trainer_defaults={"max_epochs": 70},
        auto_configure_optimizers=False,
        parser_kwargs={"prog": "binclf", "version": __version__},
        parser_class=BinclfArgumentParser,
        args=args,
        run=run,
    )
