"""LightningCLI, wired for binclf: its defaults, a run folder per fit, and checkpoints found and checked.

The rules live beside it: run folders, checkpoint lookup and resuming in :mod:`binclf.runs`; building an
evaluated model from a checkpoint's checked values in :mod:`binclf.from_checkpoint`; checkpoint safety in
:mod:`binclf.safe_io`; bad input, signals and the clean-up after a failure in :mod:`binclf.command`; what a
command says in :mod:`binclf.monitoring.messages`.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch
from jsonargparse import set_parsing_settings
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import (
    ModelCheckpoint,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from binclf import __version__
from binclf.command import after_failure, check_config_files, check_settings
from binclf.from_checkpoint import (
    as_config,
    checked_model_settings,
    classes_named_in,
    evaluated_model,
    restore_data_state,
)
from binclf.module import BinaryClassifier
from binclf.monitoring import RUN_LOGGER, console
from binclf.monitoring.figures import DiagnosticFigures
from binclf.monitoring.messages import command_callbacks
from binclf.monitoring.predictions import PredictionWriter
from binclf.monitoring.tensorboard import hparams_row, write_hparams_row
from binclf.parser import BinclfArgumentParser
from binclf.runs import (
    RunFolder,
    check_resume,
    check_run_name,
    checkpoint_filename,
    find_checkpoint,
    log_root,
)
from binclf.safe_io import SafeCheckpointIO, load_checkpoint
from binclf.workarounds import NullProfiler

_EVALUATING = ("validate", "test", "predict")


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
            fitting = hasattr(self, "config") and self.config.get("subcommand") == "fit"
            outcome = after_failure(error, self.run_folder, getattr(self, "trainer", None), fitting)
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
            "--run_name",
            type=str | None,
            default=None,
            help="name the run: it is logged into lightning_logs/<run_name>/version_N, which TensorBoard "
            "shows as <run_name>/version_N; test, validate and predict then evaluate that name's latest run",
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
                "checkpoint.monitor": "loss/val",
                "checkpoint.mode": "min",
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
        check_run_name(config.get("run_name"))
        self.run_folder = RunFolder(log_root(config.trainer, config.get("run_name")))
        if config.get("run_name") and self.run_folder.root is None:
            raise ValueError("--run_name: the configured logger names its own folders; name the run there")
        if subcommand not in _EVALUATING and not config.get("ckpt_path"):
            return
        # Found, read once and checked as plain data. No parser sees the checkpoint's model settings, and
        # nothing they name is imported: evaluation builds the model from them in Python
        # (instantiate_classes); a resume must have the config's own.
        dirpath = config.checkpoint.get("dirpath")
        path = find_checkpoint(config.ckpt_path, self.run_folder.root, dirpath, data=config.data.as_dict())
        contents = load_checkpoint(path)
        self.checkpoint = path, contents
        if subcommand == "fit":
            check_resume(path, contents, config, self.model_class, self.run_folder)
        else:
            own_classes = classes_named_in(config.as_dict())
            hyperparameters = contents.get("hyper_parameters", {})
            self.model_settings = checked_model_settings(hyperparameters, path, self.model_class, own_classes)
            if (version := self.run_folder.version_of(path)) is not None:
                self.run_folder.resume(version)  # one fitted run, one TensorBoard run: its tests log into it
        # LightningCLI would read the checkpoint's hyperparameters into its parser (``_parse_ckpt_path``);
        # without a ckpt_path it skips that. Restored in before_instantiate_classes.
        config.ckpt_path = None

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config  # no subcommand: run=False
        if self.checkpoint is not None:
            config.ckpt_path = str(self.checkpoint[0])
        check_settings(config, self.subcommand)
        if config.checkpoint.get("filename") is None and config.checkpoint.get("monitor"):
            config.checkpoint.filename = checkpoint_filename(config.checkpoint.monitor)
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        # The run's saved config keeps the logger as given, without the version this run claims below, so
        # that ``-c lightning_logs/version_N/config.yaml`` repeats the run, or tests it, like any config.
        self._logger_as_given = copy.deepcopy(config.trainer.get("logger"))
        if not config.trainer.get("fast_dev_run"):  # which writes no logs: no folder to claim
            config_name = self.run_folder.point_logger_here(config.trainer, self.subcommand)
            if config_name is not None:
                self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": config_name}

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self.checkpoint is not None and self.subcommand != "fit":
            # Evaluated as the checkpoint was trained; the run's saved config records its settings.
            self.model = evaluated_model(self.model, self.model_settings, *self.checkpoint)
            for key, value in as_config(self.model_settings).items():
                self.config[self.subcommand].model[key] = value

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs["plugins"] = [*plugins, SafeCheckpointIO(checked=self.checkpoint)]
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        scheduled = self.subcommand == "fit" and self.config["fit"].model.lr_scheduler is not None
        in_its_run = self.run_folder.version is not None
        ours, bar = command_callbacks(
            self.subcommand, config, callbacks, scheduled, self.checkpoint, in_its_run
        )
        kwargs["callbacks"] = [*callbacks, *ours]
        if not bar:
            kwargs["enable_progress_bar"] = False
        if config.get("profiler") is None:
            kwargs["profiler"] = NullProfiler()
        return super().instantiate_trainer(**kwargs)

    def after_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        config.trainer.logger = self._logger_as_given  # the trainer's logger is built; see above
        if self.checkpoint is not None:
            restore_data_state(self.datamodule, *self.checkpoint)

    def before_fit(self) -> None:
        if self.trainer.is_global_zero:
            write_hparams_row(self.trainer.loggers, hparams_row(self.config["fit"], self.model.hparams))

    def before_test(self) -> None:
        """binclf prints its own summary after ``test``; Lightning's table of raw values comes back with
        ``--verbose true``."""
        if not any(arg.startswith("--verbose") for arg in self._command_line):
            self.config_init[self.subcommand].verbose = False

    before_validate = before_test


def run_cli(args: list[str] | None = None, *, run: bool = True) -> BinclfCLI:
    """Run one ``binclf`` command and return the CLI, whose ``trainer`` holds the results (for tests).

    With ``run=False`` (LightningCLI's own option), ``args`` are a ``fit``'s arguments without the
    subcommand, and the CLI builds the model, data module and trainer as ``binclf fit`` would, and stops.
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
        # The logger and progress bar that Lightning would choose are binclf's, and --print_config says so.
        trainer_defaults={
            "max_epochs": 70,
            "logger": {"class_path": RUN_LOGGER},
            "enable_progress_bar": True,
        },
        auto_configure_optimizers=False,
        parser_kwargs={"prog": "binclf", "version": __version__},
        parser_class=BinclfArgumentParser,
        args=args,
        run=run,
    )
