"""How a ``binclf`` command ends, and the input it refuses before Lightning would: one line for bad input,
exit statuses, Ctrl-C and SIGTERM, the clean-up after a failed run, and checks of config files and settings.

The entry point is :mod:`binclf.main`, the LightningCLI wiring :mod:`binclf.cli`; both use this module, which
uses neither. It imports nothing heavy at the top: the console scripts install the SIGTERM handler here
before they import torch and Lightning, which takes seconds.
"""

from __future__ import annotations

import itertools
import re
import signal
import sys
from argparse import ArgumentError
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from jsonargparse import Namespace

    from binclf.runs import RunFolder

EXIT_STATUS = {"Ctrl-C": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report it
BAD_INPUT, DIVERGED = 2, 1


class Terminated(SystemExit):
    """SIGTERM arrived. A ``SystemExit``, so that no ``except Exception`` on the way up swallows it."""

    def __init__(self) -> None:
        super().__init__(EXIT_STATUS["SIGTERM"])


_sigterm_received = False


def sigterm_received() -> bool:
    """Whether SIGTERM has come, even if the exception it raised was swallowed on the way up."""
    return _sigterm_received


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    # Remembered as well as raised: code that catches every exception (some imports do) could swallow the
    # raise, and the command would then finish and exit 0 as if no SIGTERM had come.
    global _sigterm_received
    _sigterm_received = True
    raise Terminated


def raise_on_sigterm() -> signal.Handlers | object:
    """From now on SIGTERM raises :class:`Terminated` in the main thread; returns the previous handler.

    Lightning's trainer adds its own handler while it runs and calls this one after it, so a stopped
    ``fit`` still tells its DDP processes to stop before the exception unwinds the run. Where Python
    swallows the raise (in a destructor), it would print it as a traceback; the command ends with 143
    instead (:func:`binclf.main.main`), so that print is left out.
    """
    report_unraisable = sys.unraisablehook

    def unless_terminated(unraisable: sys.UnraisableHookArgs) -> None:
        if not isinstance(unraisable.exc_value, Terminated):
            report_unraisable(unraisable)

    sys.unraisablehook = unless_terminated
    return signal.signal(signal.SIGTERM, _raise_terminated)


_STRUCTURE = ("Does not validate", "Subtypes:", "Errors:", "Given value", "Problem with given class_path")


def parse_error_line(message: str) -> str:
    """A parser's message as one line: the setting's whole key, then the first line that says what is
    wrong with it. jsonargparse nests one message per class and per type a setting may take."""
    keys, details = [], []
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ")
        key = re.search(r'Parser key "([^"]+)":\s*(.*)$', line)
        if key:
            keys.append(key[1])
            line = key[2]
            details = []  # what is wrong is said under the innermost key
        if line and not line.startswith(_STRUCTURE) and "NoneType" not in line:
            details.append(line)
    detail = details[0] if details else message.strip().splitlines()[0]
    return f"{'.'.join(dict.fromkeys(keys))}: {detail}" if keys else detail


def error_message(error: BaseException) -> str:
    """The line of ``error`` that names the problem."""
    from binclf.checkpoint import CheckpointError

    if isinstance(error, ArgumentError):
        return _short(parse_error_line(str(error)))

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
        return _short(reasons[0] if reasons else lines[0])
    return _short(lines[0])


# The longest error line binclf prints: a value it quotes (a whole file, a long list) is cut short.
LONGEST_MESSAGE = 500


def _short(line: str) -> str:
    return (
        line
        if len(line) <= LONGEST_MESSAGE
        else f"{line[: LONGEST_MESSAGE - 30]}... ({len(line):,} characters)"
    )


# What a config file may be: far beyond any real config, and far below what would exhaust memory or the
# parser's recursion when jsonargparse expands and copies it.
CONFIG_LIMITS = {"bytes": 1_000_000, "values": 100_000, "depth": 50}


def config_files(args: list[str]) -> list[str]:
    """The config files that ``args`` give with ``-c``/``--config``."""
    paths = [value for flag, value in itertools.pairwise(args) if flag in ("-c", "--config")]
    return paths + [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]


def check_config_files(args: list[str]) -> None:
    """Name a config file that is not valid YAML, with its line, before LightningCLI would print its whole
    usage and an error about a ``<unicode string>``; and refuse one that is too large, nested too deep, or
    whose aliases expand to too many values (:data:`CONFIG_LIMITS`)."""
    from binclf.paths import regular_file

    for path in map(Path, config_files(args)):
        check_config_text(regular_file(path, "-c").read_bytes(), path)


def check_config_text(data: bytes, path: Path) -> None:
    """:func:`check_config_files` for one file's bytes."""
    if len(data) > CONFIG_LIMITS["bytes"]:
        raise ValueError(
            f"{path} is {len(data):,} bytes, more than a config file may be ({CONFIG_LIMITS['bytes']:,})"
        )
    try:
        root = yaml.compose(data.decode("utf-8", errors="replace"), Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{path}{where}: not valid YAML ({problem})") from None
    except RecursionError:
        raise ValueError(f"{path}: nested deeper than {CONFIG_LIMITS['depth']} levels") from None
    expanded: dict[int, int] = {}  # values under each node, aliases followed, counted once per node

    def count(node: yaml.Node, depth: int) -> int:
        line = node.start_mark.line + 1
        if depth > CONFIG_LIMITS["depth"]:
            raise ValueError(f"{path}, line {line}: nested deeper than {CONFIG_LIMITS['depth']} levels")
        if (
            node.tag not in _PLAIN_TAGS
        ):  # written as !!binary, !!python/..., !!timestamp or a tag of one's own
            kind = node.tag.removeprefix("tag:yaml.org,2002:")
            raise ValueError(
                f"{path}, line {line}: a YAML {kind} value; a config holds text, numbers, booleans, lists "
                "and mappings only (quote it to mean the text)"
            )
        if id(node) not in expanded:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
            if isinstance(node, yaml.MappingNode):
                _refuse_repeated_keys(node, path)
                children = [part for pair in node.value for part in pair]
            total = 1 + sum(count(child, depth + 1) for child in children)
            if total > CONFIG_LIMITS["values"]:
                raise ValueError(
                    f"{path}, line {line}: expands to more than {CONFIG_LIMITS['values']:,} values "
                    "(YAML aliases repeat what they point to)"
                )
            expanded[id(node)] = total
        return expanded[id(node)]

    if root is not None:
        count(root, 0)


# What YAML reads a config's values as: text, numbers, booleans, null, lists and mappings (and ``<<``, which
# merges one mapping into another).
_PLAIN_TAGS = {
    f"tag:yaml.org,2002:{kind}" for kind in ("str", "int", "float", "bool", "null", "seq", "map", "merge")
}


def _refuse_repeated_keys(mapping: yaml.MappingNode, path: Path) -> None:
    """A key given twice in one mapping: YAML keeps the last without a word, so the first is refused."""
    seen: dict[Any, int] = {}
    for key, _ in mapping.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        line = key.start_mark.line + 1
        if key.value in seen:
            raise ValueError(
                f"{path}, line {line}: {key.value!r} is given twice (lines {seen[key.value]} and {line}); "
                "YAML would keep the second without a word"
            )
        seen[key.value] = line


def after_failure(error: BaseException, run: RunFolder, trainer: Any, fitting: bool) -> BaseException:
    """Tidy up after a command that failed or was stopped, and say what is left; returns what to raise.

    A folder this command created and that holds no checkpoint is removed: a config and a few events would
    look like a finished run. One with checkpoints is kept, since it can be resumed or tested.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from binclf.monitoring.console import warn

    signal_name = None
    if isinstance(error, (Terminated, SIGTERMException)):  # Lightning's where ours is not installed
        signal_name = "SIGTERM"
    elif isinstance(error, KeyboardInterrupt) or (
        isinstance(error, SystemExit) and error.code == 1 and getattr(trainer, "interrupted", False)
    ):
        signal_name = "Ctrl-C"  # raw, or after Lightning's graceful shutdown, which exits with 1
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


def check_settings(config: Namespace, subcommand: str | None) -> None:
    """Settings that Lightning would accept and then fail on with a traceback, or with a message that does
    not say which setting is wrong."""
    import torch

    if config.torch_threads < 0:
        raise ValueError(f"--torch_threads must be 0 (torch's choice) or more, got {config.torch_threads}")
    trainer = config.trainer
    every = trainer.get("check_val_every_n_epoch")
    if every is not None and every < 1:
        raise ValueError(f"trainer.check_val_every_n_epoch must be at least 1 (or null), got {every}")
    for key in ("max_epochs", "max_steps"):
        if trainer.get(key) == 0:
            raise ValueError(f"trainer.{key} is 0: there would be nothing to train")
        if trainer.get(key) is not None and trainer.get(key) < -1:
            raise ValueError(f"trainer.{key} must be -1 (no limit) or more, got {trainer.get(key)}")
    # Counts and fractions that Lightning takes and then divides by, or trains nothing with, without a word.
    for key, least in [
        ("accumulate_grad_batches", 1),
        ("log_every_n_steps", 0),
        ("num_sanity_val_steps", -1),
    ]:
        value = trainer.get(key)
        if value is not None and value < least:
            raise ValueError(f"trainer.{key} must be at least {least}, got {value}")
    for key in ("val_check_interval", "limit_train_batches", "limit_val_batches", "limit_test_batches"):
        value = trainer.get(key)
        if value is None:
            continue
        nothing = value <= 0 and (key != "limit_val_batches" or value < 0)
        if nothing or (isinstance(value, float) and value > 1):
            what = "a whole number of batches, at least 1, or a fraction of an epoch between 0 and 1"
            raise ValueError(f"trainer.{key} must be {what}, got {value}")
    seed = config.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < 2**32:
        raise ValueError(f"seed_everything must be a whole number from 0 to 2**32 - 1, got {seed}")
    accelerator = trainer.get("accelerator")
    gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    if accelerator in ("gpu", "cuda") and not gpu:
        raise ValueError(
            f"trainer.accelerator={accelerator}, but torch finds no GPU on this machine: use "
            "--trainer.accelerator cpu, or auto to take a GPU only where there is one"
        )
    calibration = config.model.get("calibration", "none")
    if subcommand == "fit" and calibration != "none" and trainer.get("limit_val_batches") == 0:
        raise ValueError(
            f"model.calibration={calibration} is fitted on the validation split, but "
            "trainer.limit_val_batches is 0: let validation run, or use model.calibration=none"
        )
