"""The ``binclf`` command around the CLI: one line for bad input, exit statuses, Ctrl-C and SIGTERM.

The LightningCLI wiring is in :mod:`binclf.cli`; this module decides how a command ends. It imports nothing
heavy at the top: the console scripts install the SIGTERM handler here before they import torch and
Lightning, which takes seconds.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from types import FrameType

EXIT_STATUS = {"Ctrl-C": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report it
BAD_INPUT, DIVERGED = 2, 1


class Terminated(SystemExit):
    """SIGTERM arrived. A ``SystemExit``, so that no ``except Exception`` on the way up swallows it."""

    def __init__(self) -> None:
        super().__init__(EXIT_STATUS["SIGTERM"])


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def raise_on_sigterm() -> signal.Handlers | object:
    """From now on SIGTERM raises :class:`Terminated` in the main thread; returns the previous handler.

    Lightning's trainer adds its own handler while it runs and calls this one after it, so a stopped
    ``fit`` still tells its DDP processes to stop before the exception unwinds the run.
    """
    return signal.signal(signal.SIGTERM, _raise_terminated)


class StopOnce:
    """A handler for SIGINT and SIGTERM that stops a process that has workers to end: the first signal
    raises ``KeyboardInterrupt`` or :class:`Terminated`, and any later one does nothing, so that a second
    signal (Ctrl-C pressed twice, two workers asking at once) cannot cut short the ending of the workers."""

    def __init__(self) -> None:
        self.stopping = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    def install(self) -> tuple[object, object]:
        """Handle both signals from now on; returns the previous SIGINT and SIGTERM handlers. A SIGINT that
        the process was started to ignore (a shell's background job) stays ignored, as Python leaves it."""
        interrupt = signal.getsignal(signal.SIGINT)
        if interrupt is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, self)
        return interrupt, signal.signal(signal.SIGTERM, self)


def error_message(error: BaseException) -> str:
    """The line of ``error`` that names the problem."""
    from binclf.safe_io import CheckpointError

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
        sys.exit(DIVERGED if isinstance(error, FloatingPointError) else BAD_INPUT)
    except KeyboardInterrupt:  # before or after Lightning's own handling, which covers the run itself
        print("binclf: stopped by Ctrl-C", file=sys.stderr)
        sys.exit(EXIT_STATUS["Ctrl-C"])


def main() -> None:
    """The ``binclf`` console script and ``python -m binclf``: :func:`cli_main`, then an exit that skips
    the interpreter's teardown (:func:`binclf.workarounds.exit_without_teardown`)."""
    raise_on_sigterm()  # from the first moment: a command stopped while it imports still exits with 143
    if sys.stderr.isatty() and sys.argv[1:2] and not sys.argv[1].startswith("-"):
        # Importing torch and Lightning takes seconds; a person at a terminal sees the command has begun.
        print(f"binclf {sys.argv[1]}: starting...", file=sys.stderr, flush=True)
    try:
        cli_main()
        code = 0
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
