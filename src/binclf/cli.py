"""The ``binclf`` command: LightningCLI with the project's defaults and its checkpoint lookup."""

from __future__ import annotations

import atexit
import os
import pickle
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from binclf import console
from binclf.callbacks import DiagnosticFigures, PredictionWriter, run_dir
from binclf.checkpoints import resolve_checkpoint
from binclf.console import say
from binclf.data import TwoGaussianDataModule  # noqa: F401  (imported so that --data finds it by name)
from binclf.module import BinaryClassifier
from binclf.networks import MLP, LogisticRegression  # noqa: F401  (--model.network finds them by name)
from binclf.tabular import TabularDataModule  # noqa: F401  (--data finds it by name)

_EVALUATING = ("validate", "test", "predict")
_PROGRESS_REFRESH_STEPS = 10


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


class BinclfCLI(LightningCLI):
    """LightningCLI whose ``test``, ``validate`` and ``predict`` find the latest run's best checkpoint."""

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
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch={epoch}-step={step}-val_loss={val/loss:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
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
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            # Lightning's default bar redraws, metrics and all, after every step, which costs about as much
            # as this model's whole training step. Redrawn every few steps it looks the same.
            kwargs["callbacks"] = [*callbacks, TQDMProgressBar(refresh_rate=_PROGRESS_REFRESH_STEPS)]
        return super().instantiate_trainer(**kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand in _EVALUATING:
            # Resolved before LightningCLI reads the checkpoint's hyperparameters, so that the model is
            # rebuilt as it was trained, whatever the config says.
            config = self.config[subcommand]
            self.config[subcommand].ckpt_path = str(self._find_checkpoint(config))

    def _find_checkpoint(self, config: Namespace) -> Path:
        request = config.get("ckpt_path")
        dirpath = config.checkpoint.get("dirpath")
        root = Path(dirpath) if dirpath else _log_root(config.trainer)
        if root is None and request in (None, "best", "last"):
            sys.exit(
                "binclf: error: cannot find checkpoints without a logger or --checkpoint.dirpath; "
                "pass --ckpt_path FILE"
            )
        try:
            return resolve_checkpoint(request, root, in_run_dirs=not dirpath)
        except FileNotFoundError as error:
            sys.exit(f"binclf: error: {error}")

    def before_instantiate_classes(self) -> None:
        threads = self._get(self.config, "torch_threads")
        if threads < 0:
            sys.exit(f"binclf: error: --torch_threads must be 0 or more, got {threads}")
        if threads:
            torch.set_num_threads(threads)

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


def cli_main(args: list[str] | None = None) -> None:
    """Entry point of ``binclf`` and ``python -m binclf``; ``args`` replaces ``sys.argv[1:]``.

    Bad input (a setting, a data file, a checkpoint) ends the command with one line on stderr and exit
    status 2, not a traceback; ``BINCLF_DEBUG=1`` shows the traceback instead.
    """
    try:
        run_cli(args)
    except (ValueError, OSError, pickle.UnpicklingError) as error:
        if os.environ.get("BINCLF_DEBUG"):
            raise
        # jsonargparse wraps a constructor's own error in its own; the innermost one names the problem.
        while error.__cause__ or error.__context__:
            error = error.__cause__ or error.__context__
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        print(f"binclf: error: {first_line}", file=sys.stderr)
        sys.exit(2)


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
