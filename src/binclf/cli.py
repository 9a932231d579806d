"""The ``binclf`` command: LightningCLI, wired for binclf, and each subcommand in the order it happens
(:func:`run_command`): parse the settings, decide what the command runs on, build, run, report.

What a command runs on (which run, which checkpoint, which settings) is decided in :mod:`binclf.runs`,
checkpoints are read and checked in :mod:`binclf.checkpoint`, and what a command says is in
:mod:`binclf.monitoring.messages`; bad input, signals and the clean-up after a failure are in
:mod:`binclf.command`.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from binclf.checkpoint import as_config, check_weights, evaluated_model, restore_data_state
from binclf.checkpoint_io import SafeCheckpointIO
from binclf.command import after_failure, check_config_files, check_settings, config_files
from binclf.data.contract import what_it_misses
from binclf.limits import require_memory
from binclf.module import BinaryClassifier
from binclf.monitoring import RUN_LOGGER, console
from binclf.monitoring.figures import DiagnosticFigures
from binclf.monitoring.messages import command_callbacks, report
from binclf.monitoring.predictions import PredictionWriter
from binclf.monitoring.tensorboard import hparams_row, tested_on, write_hparams_row
from binclf.oracle import scoring_callbacks
from binclf.parser import BinclfArgumentParser, unknown_command
from binclf.runs import Decision, Request, RunFolder, check_run_name, checkpoint_filename, decide
from binclf.safe_io import atomic_write
from binclf.usage import SUBCOMMANDS, answered_at_once
from binclf.workarounds import NullProfiler, hyperparameters_of


def run_command(args: list[str]) -> BinclfCLI:
    """Run one ``binclf`` command, ``args`` as on the command line, and return its CLI, whose ``trainer``
    holds the results (for tests)."""
    command, args = _split(args)
    check_config_files(args)
    cli = BinclfCLI(command, args)  # parse: LightningCLI's parser, and binclf's checks, take every setting
    decision = decide(request(command, cli.config, args))  # what the command runs on, decided once
    console.say(decision.line())
    if decision.finished is not None:
        return cli
    folder = RunFolder(decision.log_root, decision.run)
    try:
        cli.build(decision, folder)  # the data module, model and trainer for that run
        _run(cli, decision, folder)
        report(command, cli.trainer, cli.model, decision.differences)
    except BaseException as error:
        outcome = after_failure(error, folder, getattr(cli, "trainer", None), command == "fit")
        if outcome is error:
            raise
        raise outcome from None
    return cli


def _run(cli: BinclfCLI, decision: Decision, folder: RunFolder) -> None:
    """Run the command with the trainer, the run's HParams row saying what it runs with."""
    command, trainer, model, data = decision.command, cli.trainer, cli.model, cli.datamodule
    missing = what_it_misses(data)
    if missing is not None:
        console.warn(missing)
    keeps_the_row = trainer.is_global_zero and folder.path is not None
    if command == "fit":
        if keeps_the_row:  # a new run's row, or a continued run's, with the budget it now trains to
            write_hparams_row(folder.path, hparams_row(cli.config, model.hparams))
        trainer.fit(model, datamodule=data, ckpt_path=decision.checkpoint)
    elif command == "predict":
        trainer.predict(model, datamodule=data, return_predictions=False)
    else:
        getattr(trainer, command)(model, datamodule=data, verbose=cli.config.verbose)
        if keeps_the_row:
            tested_on(folder.path, command, decision.differences)


def _split(args: list[str]) -> tuple[str, list[str]]:
    """The subcommand, and its arguments; ``--help`` and ``--version`` are answered here."""
    if answered_at_once(args):
        raise SystemExit(0)
    if args[0] not in SUBCOMMANDS:
        raise unknown_command(args[0])
    return args[0], args[1:]


class BinclfCLI(LightningCLI):
    """LightningCLI for one binclf ``command``: it parses the command's settings; :meth:`build` then builds
    the data module, model and trainer for the run :func:`binclf.runs.decide` chose, and
    :func:`run_command` runs the command."""

    def __init__(self, command: str, args: list[str]) -> None:
        self.command = command
        super().__init__(
            BinaryClassifier,
            LightningDataModule,  # any data module by class_path; TwoGaussianDataModule unless one is named
            subclass_mode_data=True,
            save_config_callback=None,  # binclf saves each command's config into its run (RunConfig)
            seed_everything_default=0,
            # Without a config, `binclf fit` is the article's experiment: the other defaults already are.
            # The logger and progress bar that Lightning would choose are binclf's; --print_config says so.
            trainer_defaults={
                "max_epochs": 70,
                "logger": {"class_path": RUN_LOGGER},
                "enable_progress_bar": True,
            },
            auto_configure_optimizers=False,
            parser_kwargs={
                "prog": f"binclf {command}",
                "description": SUBCOMMANDS[command],
                "command": command,
            },
            parser_class=BinclfArgumentParser,
            args=args,
            run=False,  # binclf runs the command itself, once it has decided what it runs on
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help=(
                "a checkpoint to train on from: `last` continues the run whose config -c gives, else the "
                "latest run of this data; `best` or a file starts a new run from that checkpoint"
                if self.command == "fit"
                else "the checkpoint to evaluate: a file, or `best` (the default) or `last` of the run whose "
                "config -c gives, else of the latest run of this data"
            ),
        )
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="name the run: it is logged into lightning_logs/<run_name>/version_N, which TensorBoard "
            "shows as <run_name>/version_N; test, validate and predict then evaluate that name's latest run",
        )
        parser.add_argument(
            "--torch_threads",
            type=int,
            default=0,
            help="torch intra-op threads; 0 keeps torch's choice. A model as small as the article's is "
            "fastest on one, and slows down badly with more when another process is busy on a core.",
        )
        if self.command == "fit":
            parser.add_argument(
                "--resume_with_other_data",
                type=bool,
                default=False,
                help="with --ckpt_path: train on data settings other than those the checkpoint was trained "
                "with (refused otherwise, since it is usually a mistake)",
            )
        if self.command in ("validate", "test"):
            parser.add_argument(
                "--verbose", type=bool, default=False, help="also print Lightning's table of raw values"
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
        """LightningCLI's parsing, then the settings it would take and fail on later, checked before
        LightningCLI seeds anything with them (:func:`binclf.command.check_settings`)."""
        super().parse_arguments(parser, args)
        check_settings(self.config, self.command)

    def instantiate_classes(self) -> None:
        """Nothing is built while LightningCLI parses: :func:`run_command` first decides what the command
        runs on, then calls :meth:`build`."""

    def build(self, decision: Decision, folder: RunFolder) -> None:
        """The data module, model and trainer for ``decision``, logging into ``folder`` (claimed now for a
        new run)."""
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        saves = not self.config.trainer.get("fast_dev_run")  # a smoke test saves nothing
        if folder.path is None and folder.root is not None and saves and rank_zero_only.rank == 0:
            folder.claim(_logger_version(self.config))
        self.config_init = self.instantiated(self.config)
        self.datamodule, self.model = self._data_and_model(decision)
        self.trainer = self.instantiate_trainer(**self._trainer_settings(decision, folder, saves))

    def _data_and_model(self, decision: Decision) -> tuple[Any, Any]:
        """A fit's data module and model are the config's; an evaluation's are the run's own, built in Python
        from the settings its checkpoint gave; both get what the checkpoint holds of them."""
        data, model = self.config_init.data, self.config_init.model
        if decision.command == "fit":
            _try_optimizer(model)
        if decision.checkpoint is None:
            return data, model
        if decision.command == "fit":
            check_weights(decision.contents, model, decision.checkpoint)  # Lightning loads them
        else:
            data = type(data)(**decision.data)
            model = evaluated_model(model, decision.model, decision.checkpoint, decision.contents)
        restore_data_state(data, decision.checkpoint, decision.contents)
        return data, model

    def _trainer_settings(self, decision: Decision, folder: RunFolder, saves: bool) -> dict[str, Any]:
        """What binclf gives the trainer beside the config's settings: its callbacks, the logger in the run's
        folder, the checkpoint I/O that reads checkpoints as data, a profiler that records nothing."""
        trainer, model, data = self.config_init.trainer, self.model, self.datamodule
        best = self.config_init.checkpoint
        if best.filename is None and best.monitor:  # named after the metric it is chosen by
            best.filename = checkpoint_filename(best.monitor)
        callbacks = trainer.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        ours, bar = command_callbacks(decision.command, trainer, callbacks, model, decision.contents)
        if decision.command in ("fit", "test"):  # a fit's trainer may test its best checkpoint next
            ours += scoring_callbacks(data, model)
        if (folder.root is not None or folder.path is not None) and saves:
            # On every DDP rank, as Lightning's own: it syncs them. Global rank zero writes, into its folder.
            name = folder.config_name(decision.command, decision.resumes) if folder.path else None
            path = folder.path / name if name else None
            ours.append(RunConfig(self.parser, self._record(decision), path, decision.line()))
        settings: dict[str, Any] = {"callbacks": [*callbacks, *ours]}
        logger = _logger_in(trainer.get("logger"), self.config.trainer, folder.path)
        if logger is not None:
            settings["logger"] = logger
        plugins = trainer.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            checked = (decision.checkpoint, decision.contents) if decision.checkpoint is not None else None
            settings["plugins"] = [*plugins, SafeCheckpointIO(checked=checked)]
        if trainer.get("profiler") is None:
            settings["profiler"] = NullProfiler()
        if not bar:
            settings["enable_progress_bar"] = False
        return settings

    def _record(self, decision: Decision) -> Namespace:
        """The command's config as its run keeps it: every setting of the run, for an evaluation the model
        and data settings its checkpoint gave; but neither the logger's version, which is where the run
        went, not how it ran, nor the options of one command only (``verbose``, ``resume_with_other_data``).
        With ``-c`` any command takes it; in the run's folder it names that run, and ``--ckpt_path`` as the
        command was given it (``best``, say) finds the same kind of checkpoint there again."""
        record = self.config.clone()
        if decision.checkpoint is not None and decision.command != "fit":
            record.data.init_args = Namespace(**decision.data)
            for key, value in as_config(decision.model).items():
                record.model[key] = value
        for option in ("verbose", "resume_with_other_data"):
            if option in record:
                del record[option]
        logger = record.trainer.get("logger")
        if (
            isinstance(logger, Namespace)
            and (logger.get("init_args") or Namespace()).get("version") is not None
        ):
            logger.init_args.version = None
        return record

    def instantiated(self, config: Namespace) -> Namespace:
        """Every class ``config`` names, built, the network planned first on the meta device, which
        allocates nothing: settings that would need more memory than this machine has are refused before
        any of it is allocated."""
        network = configured_network(config)
        planned = [(_planned_network, network[1], False)] if network is not None else []
        hyperparameters_of(self, config)  # the module records these settings, not those the CLI parsed
        return self.parser.instantiate(config, instantiators=planned)


class RunConfig(SaveConfigCallback):
    """Saves the command's config into its run folder as ``path``, headed by the line that said what the
    command ran on (the checkpoint file, the data)."""

    def __init__(
        self, parser: LightningArgumentParser, config: Namespace, path: Path | None, line: str
    ) -> None:
        super().__init__(parser, config, save_to_log_dir=False)
        self.path, self.line = path, line

    def save_config(self, *_: Any) -> None:  # on global rank zero only
        text = f"# {self.line}\n" + self.parser.dump(self.config, skip_none=False, skip_validation=True)
        atomic_write(self.path, lambda tmp: tmp.write_text(text))


def request(command: str, config: Namespace, args: list[str]) -> Request:
    """What the parsed ``config`` asks the command to run on: plain values for :func:`binclf.runs.decide`."""
    check_run_name(config.get("run_name"))
    root = log_root(config.trainer, config.get("run_name"))
    if config.get("run_name") and root is None:
        raise ValueError("--run_name: the configured logger names its own folders; name the run there")
    data_class = _imported(config.data.class_path)
    dirpath = config.checkpoint.get("dirpath")
    return Request(
        command,
        ckpt_path=config.get("ckpt_path"),
        log_root=root,
        run_name=config.get("run_name"),
        logger_version=_logger_version(config),
        checkpoint_dir=Path(dirpath) if dirpath else None,
        config_files=tuple(Path(path) for path in config_files(args)),
        data_class=data_class,
        data=(config.data.get("init_args") or Namespace()).as_dict(),
        given=given_settings(args, "data"),
        model_class=BinaryClassifier,
        model=config.model.as_dict(),
        network=configured_network(config),
        max_epochs=config.trainer.get("max_epochs"),
        max_steps=config.trainer.get("max_steps", -1),
        resume_with_other_data=config.get("resume_with_other_data", False),
    )


def log_root(trainer: Namespace, run_name: str | None = None) -> Path | None:
    """Where the configured logger keeps its runs, read from the config before it is built (under
    ``run_name`` when there is one); ``None`` for a logger that names its own folders, or none."""
    logger = trainer.get("logger")
    default_root = Path(trainer.get("default_root_dir") or ".")
    if logger is None or logger is True:  # Lightning's default logger: binclf's defaults make it a RunLogger
        base = default_root / "lightning_logs"
    elif not isinstance(logger, Namespace) or not _versioned(logger.get("class_path")):
        return None
    else:
        init_args = logger.get("init_args") or Namespace()
        save_dir = init_args.get("save_dir") or (default_root if logger.class_path == RUN_LOGGER else None)
        if not save_dir:
            return None
        name = init_args.get("name")
        base = Path(save_dir) / ("lightning_logs" if name is None else name)
    return base / run_name if run_name else base


def _versioned(class_path: Any) -> bool:
    """Whether binclf decides the runs of a logger: its own, and Lightning's TensorBoard and CSV loggers."""
    return class_path == RUN_LOGGER or str(class_path).endswith((".TensorBoardLogger", ".CSVLogger"))


def _logger_version(config: Namespace) -> int | str | None:
    logger = config.trainer.get("logger")
    return (logger.get("init_args") or Namespace()).get("version") if isinstance(logger, Namespace) else None


def _logger_in(built: Any, trainer: Namespace, run: Path | None) -> Logger | None:
    """The configured logger, logging into the run folder ``run``: built anew with the config's settings and
    the run's place, which the config does not say. ``None``: the trainer keeps the logger as built."""
    spec = trainer.get("logger")
    versioned = isinstance(built, (TensorBoardLogger, CSVLogger)) and isinstance(spec, Namespace)
    if run is None or not versioned:
        return None
    settings = (spec.get("init_args") or Namespace()).as_dict()
    # Where neither the logger nor the trainer names a folder: the current one, as a full path, as Lightning's
    # default logger has it.
    named = settings.get("save_dir") or trainer.get("default_root_dir")
    place = run.parent if named else run.parent.absolute()
    settings |= {"save_dir": str(place), "name": "", "version": run.name}
    if isinstance(built, TensorBoardLogger):
        settings["default_hp_metric"] = False  # binclf writes each run's HParams row itself
    return type(built)(**settings)


def _try_optimizer(model: Any) -> None:
    """Build the model's optimizer, and its scheduler, once on a stand-in parameter: settings their classes
    refuse (a negative learning rate) are named now as the settings they are, not in the middle of fit."""
    stand_in = torch.nn.Parameter(torch.zeros(1))
    try:
        optimizer = model.optimizer([stand_in])
    except Exception as error:  # whatever the optimizer's constructor raises
        raise ValueError(f"model.optimizer: {error}") from None
    try:
        if model.lr_scheduler is not None:
            model.lr_scheduler(optimizer)
    except Exception as error:
        raise ValueError(f"model.lr_scheduler: {error}") from None


def configured_network(config: Namespace) -> tuple[str, type] | None:
    """``model.network``'s class path and class, as the parser left it imported (looked up, never
    imported)."""
    spec = config.model.get("network")
    name = spec.get("class_path") if isinstance(spec, Namespace) else None
    cls = _imported(name) if isinstance(name, str) else None
    return (name, cls) if isinstance(cls, type) else None


def _imported(class_path: str) -> Any:
    module, _, attribute = class_path.rpartition(".")
    return getattr(sys.modules.get(module), attribute, None)


def _planned_network(class_type: type, *args: Any, **kwargs: Any) -> Any:
    """A network, built once on the meta device to count its weights before it is built for real."""
    with torch.device("meta"):
        planned = class_type(*args, **kwargs)
    weights = sum(p.numel() * p.element_size() for p in planned.parameters())
    shown = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
    # The weights, their gradients and up to two optimizer states.
    require_memory(f"model.network ({class_type.__name__} with {shown})", 4 * weights, "network weights")
    return class_type(*args, **kwargs)


def given_settings(args: list[str], group: str) -> frozenset[str]:
    """The settings of ``group`` (``data``) that ``args`` give, on the command line or in a config file: what
    the command asks for, as opposed to the defaults."""
    given: set[str] = set()
    for path in config_files(args):
        with Path(path).open() as file:  # checked by check_config_files: a YAML file of bounded size
            given |= _keys(yaml.safe_load(file), group)
    flag = f"--{group}"
    for i, arg in enumerate(args):
        if arg.startswith(f"{flag}."):
            key = arg[len(flag) + 1 :].split("=", 1)[0].removeprefix("init_args.")
            given.add(key.split(".", 1)[0])
        elif arg == flag or arg.startswith(f"{flag}="):  # a class, its settings, or a file of them
            value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            given |= _keys({group: _loaded(value)}, group)
    return frozenset(given - {"help"})


def _loaded(value: str) -> Any:
    """A value the parser has taken for a class group: settings written inline, or a file of them; else
    ``None`` (a class name)."""
    with contextlib.suppress(OSError, yaml.YAMLError):
        return yaml.safe_load(Path(value).read_text() if Path(value).is_file() else value)
    return None


def _keys(config: Any, group: str) -> set[str]:
    """The settings a loaded config gives for ``group``: the keys of its ``init_args``, or its own keys."""
    section = config.get(group) if isinstance(config, dict) else None
    if not isinstance(section, dict):
        return set()
    init_args = section.get("init_args")
    keys = set(init_args) if isinstance(init_args, dict) else set()
    return keys | (set(section) - {"class_path", "init_args", "dict_kwargs"})
