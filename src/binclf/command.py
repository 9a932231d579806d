"""The ``binclf`` command around the CLI: one line for bad input, exit statuses, Ctrl-C and SIGTERM.

The LightningCLI wiring is in :mod:`binclf.cli`; this module decides how a command ends. It imports nothing
heavy at the top: the console scripts install the SIGTERM handler here before they import torch and
Lightning, which takes seconds.
"""

from __future__ import annotations

import itertools
import os
import pickle
import re
import signal
import sys
import threading
from argparse import ArgumentError
from pathlib import Path
from types import FrameType

import yaml

EXIT_STATUS = {"Ctrl-C": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report it
BAD_INPUT, DIVERGED = 2, 1


class Terminated(SystemExit):
    """SIGTERM arrived. A ``SystemExit``, so that no ``except Exception`` on the way up swallows it."""

    def __init__(self) -> None:
        super().__init__(EXIT_STATUS["SIGTERM"])


_sigterm_received = False


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
    instead (:func:`main`), so that print is left out.
    """
    report_unraisable = sys.unraisablehook

    def unless_terminated(unraisable: sys.UnraisableHookArgs) -> None:
        if not isinstance(unraisable.exc_value, Terminated):
            report_unraisable(unraisable)

    sys.unraisablehook = unless_terminated
    return signal.signal(signal.SIGTERM, _raise_terminated)


class StopOnce:
    """A handler for SIGINT and SIGTERM that stops a process that has workers to end: the first signal
    raises ``KeyboardInterrupt`` or :class:`Terminated`, and any later one does nothing, so that a second
    signal (Ctrl-C pressed twice, two workers asking at once) cannot cut short the ending of the workers."""

    def __init__(self) -> None:
        self.received: int | None = None  # the signal that stops the process, once one has come

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return
        self.received = signum
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    @property
    def stopped_by(self) -> str | None:
        """``"Ctrl-C"`` or ``"SIGTERM"`` once a signal has come (the keys of ``EXIT_STATUS``)."""
        return None if self.received is None else "SIGTERM" if self.received == signal.SIGTERM else "Ctrl-C"

    def install(self) -> tuple[object, object]:
        """Handle both signals from now on; returns the previous SIGINT and SIGTERM handlers. A SIGINT that
        the process was started to ignore (a shell's background job) stays ignored, as Python leaves it."""
        interrupt = signal.getsignal(signal.SIGINT)
        if interrupt is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, self)
        return interrupt, signal.signal(signal.SIGTERM, self)


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
    from binclf.safe_io import CheckpointError

    if isinstance(error, ArgumentError):
        return parse_error_line(str(error))

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
    """Run one ``binclf`` command in this process; ``args`` replaces ``sys.argv[1:]``.

    Bad input (a setting, a data file, a checkpoint) ends the command with one line on stderr and exit
    status 2, a diverged run with such a line and status 1, not a traceback; ``BINCLF_DEBUG=1`` shows the
    traceback instead.
    """
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from binclf.cli import run_cli

    failed_writes: list[OSError] = []
    default_hook = threading.excepthook

    def background_write_failed(failure: threading.ExceptHookArgs) -> None:
        # TensorBoard writes events from a thread of its own; on a full disk that thread dies with a
        # traceback. The write failed: say so once, as the command's own error, not as a traceback.
        if isinstance(failure.exc_value, OSError):
            failed_writes.append(failure.exc_value)
        else:
            default_hook(failure)

    threading.excepthook = background_write_failed
    try:
        run_cli(args)
        if failed_writes:
            raise failed_writes[0]
    except (
        ArgumentError,
        ValueError,
        OSError,
        pickle.UnpicklingError,
        FloatingPointError,
        MisconfigurationException,
    ) as error:
        if os.environ.get("BINCLF_DEBUG"):
            raise
        print(f"binclf: error: {error_message(error)}", file=sys.stderr)
        sys.exit(DIVERGED if isinstance(error, FloatingPointError) else BAD_INPUT)
    except KeyboardInterrupt:  # before or after Lightning's own handling, which covers the run itself
        print("binclf: stopped by Ctrl-C", file=sys.stderr)
        sys.exit(EXIT_STATUS["Ctrl-C"])
    finally:
        threading.excepthook = default_hook


def main() -> None:
    """The ``binclf`` console script and ``python -m binclf``: :func:`cli_main`, then an exit that skips
    the interpreter's teardown (:func:`binclf.workarounds.exit_without_teardown`)."""
    raise_on_sigterm()  # from the first moment: a command stopped while it imports still exits with 143
    if sys.stderr.isatty() and sys.argv[1:2] and not sys.argv[1].startswith("-"):
        # Importing torch and Lightning takes seconds; a person at a terminal sees the command has begun.
        print(f"binclf {sys.argv[1]}: starting...", file=sys.stderr, flush=True)
    try:
        cli_main()
        code = EXIT_STATUS["SIGTERM"] if _sigterm_received else 0
        if _sigterm_received:  # raised, and swallowed on the way up
            print("binclf: stopped by SIGTERM", file=sys.stderr)
    except Terminated:  # before the CLI could handle it: while importing
        print("binclf: stopped by SIGTERM", file=sys.stderr)
        code = EXIT_STATUS["SIGTERM"]
    except SystemExit as exit_:  # a message, a status or None, as ``sys.exit`` takes them
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except OSError as error:  # while importing: torch and its kin write to the temporary folder
        print(f"binclf: error: {error}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:  # while importing
        print("binclf: stopped by Ctrl-C", file=sys.stderr)
        code = EXIT_STATUS["Ctrl-C"]
    if "lightning" not in sys.modules:  # it never got that far: nothing heavy to tear down
        sys.exit(code)
    from binclf.workarounds import exit_without_teardown

    exit_without_teardown(code)


# What a config file may be: far beyond any real config, and far below what would exhaust memory or the
# parser's recursion when jsonargparse expands and copies it.
CONFIG_LIMITS = {"bytes": 1_000_000, "values": 100_000, "depth": 50}


def check_config_files(args: list[str]) -> None:
    """Name a config file that is not valid YAML, with its line, before LightningCLI would print its whole
    usage and an error about a ``<unicode string>``; and refuse one that is too large, nested too deep, or
    whose aliases expand to too many values (:data:`CONFIG_LIMITS`)."""
    paths = [value for flag, value in itertools.pairwise(args) if flag in ("-c", "--config")]
    paths += [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
    for path in map(Path, paths):
        if not path.is_file():
            continue  # LightningCLI says so itself
        check_config_text(path.read_bytes(), path)


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
        if id(node) not in expanded:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
            if isinstance(node, yaml.MappingNode):
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
