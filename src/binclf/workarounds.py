"""Every place where binclf relies on a library internal, or works around a library's bug, in one module.

Each workaround here is kept because it buys behaviour, or a measured saving (``benchmarks/workarounds.py``),
and each has a test in ``tests/test_workarounds.py`` that fails when the internal it relies on changes. The
files people copy (the LightningModule, networks, data modules, configs) use public APIs only; they reach
an internal, if at all, through a named helper here.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import threading
from typing import Any, NoReturn

from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.profilers import PassThroughProfiler
from torch import Tensor


def built_by_lightning_cli() -> bool:
    """Whether LightningCLI is building the module now (behaviour, not speed).

    LightningCLI hands ``save_hyperparameters`` the config it parsed (class paths and init args): plain
    data from which a checkpoint rebuilds the network and optimizer. A module built from Python gets
    objects instead, which must stay out of its checkpoints to keep them loadable as plain data. Lightning
    says which case it is only through the private context variable ``_given_hyperparameters``.
    """
    return _given_hyperparameters.get() is not None


def lightning_cli_settings(hyperparameters: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The class path and the constructor's settings in hyperparameters that LightningCLI saved into a
    checkpoint (behaviour, not speed): beside the settings it stores the class as ``_class_path`` (for a data
    module, which binclf parses in subclass mode) and the name of its own function as ``_instantiator``,
    which binclf never uses. Any other ``_instantiator`` stays among the settings, to be refused there."""
    settings = dict(hyperparameters)
    class_path = settings.pop("_class_path", None)
    if settings.get("_instantiator") == "lightning.pytorch.cli.instantiate_module":
        del settings["_instantiator"]
    return class_path, settings


def hyperparameters_of(cli: Any, config: Any) -> None:
    """Make the module that ``cli`` builds next record ``config``'s settings as its hyperparameters
    (behaviour, not speed). LightningCLI hands the module the settings of the config it parsed itself, which
    it dumps once and keeps as ``config_dump``; a sweep's stack builds every member with its first run's
    parser, so each member's own config must take that place, or every member's checkpoint would record the
    first run's optimizer.

    LightningCLI makes it by dumping to YAML and reading that back with PyYAML's pure-Python loader; the
    same plain data dumped as JSON reads back equal, in a fraction of the time, once per member of a stack
    and once per command."""
    # Validated as it was parsed: the dump need not check it again.
    dumped = cli.parser.dump(
        config, skip_link_targets=False, skip_none=False, format="json", skip_validation=True
    )
    cli.config_dump = json.loads(dumped)  # binclf's parser has no subcommands: one per command


def datamodule_state_key(datamodule: Any) -> str:
    """Where Lightning keeps a data module's ``state_dict`` in a checkpoint (behaviour, not speed): under its
    class's qualified name. binclf restores that state before ``setup``, where Lightning would after it."""
    return type(datamodule).__qualname__


def end_now(code: int) -> NoReturn:
    """End the process at once, without running anything on the way out: a worker whose sweep has gone, or
    the sweep's forkserver as it ends, has nothing to finish, and its threads, a half-imported module or the
    teardown of torch and Lightning must not hold it up (``os._exit``)."""
    os._exit(code)


def once_per_point(batch_mean: Tensor, points: int) -> Tensor:
    """``batch_mean`` once for each of a batch's ``points``: what a ``MeanMetric(nan_strategy="disable")``
    must be given for a mean over points rather than over batches (behaviour, not speed).

    That strategy, which lets a NaN show and never waits on the device to look for one, drops ``weight=``
    and weighs every update alike (torchmetrics 1.9, Lightning-AI/torchmetrics#3434); a short last batch
    would count as much as a full one. ``expand`` copies nothing.
    """
    return batch_mean.expand(points)


def exit_without_teardown(code: int) -> NoReturn:
    """End the process as a normal exit would, minus freeing every module of torch and Lightning.

    By now the command has closed its files and loggers; what a normal exit still does that matters is
    joining non-daemon threads and running the ``atexit`` handlers. CPython has no public name for running
    those (``atexit._run_exitfuncs``), and ``os._exit`` skips the rest of the teardown.
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class NullProfiler(PassThroughProfiler):
    """Lightning's default profiler, which records nothing, without the generator-based context manager it
    still builds around every hook call (dozens per training step)."""

    _NOTHING = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.nullcontext:
        return self._NOTHING
