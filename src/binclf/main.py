"""The ``binclf`` console script and ``python -m binclf``: run one command, and end it as
:mod:`binclf.command` says (one line for bad input, exit statuses, signals)."""

from __future__ import annotations

import os
import pickle
import sys
import threading
from argparse import ArgumentError

from binclf.command import (
    BAD_INPUT,
    DIVERGED,
    EXIT_STATUS,
    Terminated,
    error_message,
    raise_on_sigterm,
    sigterm_received,
)

# Writes that failed in a background thread (TensorBoard writes its events from a thread of its own): the
# command that made them reports the first, as its own error (:func:`cli_main`).
_failed_writes: list[OSError] = []


def prepare_process() -> None:
    """Set, once per process, what a binclf command needs of the process as a whole: binclf's messages shown
    and Lightning's inapplicable ones silenced, jsonargparse's settings for reading the user's configs, and
    a failed background write reported as the command's error. :func:`main` calls it; so do a sweep's
    workers, and the tests, which run commands in their own process."""
    from jsonargparse import set_parsing_settings

    from binclf.monitoring import console

    console.quiet_inapplicable_messages()
    console.show_binclf_messages()
    # For the user's own config files and arguments (checkpoints never reach the parser): jsonargparse keeps a
    # class spec that stands where any value is accepted as data instead of building it, and refuses import
    # paths on its denylist (os, subprocess, builtins.eval, ...) instead of only warning.
    set_parsing_settings(instantiate_subclass_spec_in_any=False, import_path_denylist=[])
    threading.excepthook = _background_write_failed


def _background_write_failed(failure: threading.ExceptHookArgs) -> None:
    """On a full disk TensorBoard's writer thread dies with a traceback: the write failed, and the command
    says so once, as its own error; any other failure in a thread is reported as Python would."""
    if isinstance(failure.exc_value, OSError):
        _failed_writes.append(failure.exc_value)
    else:
        threading.__excepthook__(failure)


def cli_main(args: list[str] | None = None) -> None:
    """Run one ``binclf`` command in this process; ``args`` replaces ``sys.argv[1:]``.

    Bad input (a setting, a data file, a checkpoint) ends the command with one line on stderr and exit
    status 2, a diverged run with such a line and status 1, not a traceback; ``BINCLF_DEBUG=1`` shows the
    traceback instead.
    """
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from binclf.cli import run_command

    _failed_writes.clear()
    try:
        run_command(sys.argv[1:] if args is None else args)
        if _failed_writes:
            raise _failed_writes[0]
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


def main() -> None:
    """The ``binclf`` console script and ``python -m binclf``: :func:`cli_main`, then an exit that skips
    the interpreter's teardown (:func:`binclf.workarounds.exit_without_teardown`)."""
    raise_on_sigterm()  # from the first moment: a command stopped while it imports still exits with 143
    from binclf.usage import answered_at_once

    if answered_at_once(sys.argv[1:]):
        sys.exit(0)
    if sys.stderr.isatty() and sys.argv[1:2] and not sys.argv[1].startswith("-"):
        # Importing torch and Lightning takes seconds; a person at a terminal sees the command has begun.
        print(f"binclf {sys.argv[1]}: starting...", file=sys.stderr, flush=True)
    try:
        prepare_process()
        cli_main()
        code = EXIT_STATUS["SIGTERM"] if sigterm_received() else 0
        if sigterm_received():  # raised, and swallowed on the way up
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
