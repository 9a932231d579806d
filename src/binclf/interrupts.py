"""Ctrl-C and SIGTERM: the exit statuses a stopped command ends with, and a SIGTERM handler that turns the
signal into an exception, so that a command stopped at any moment tidies up as one stopped by Ctrl-C does.

Imports nothing heavy: the console scripts install the handler before they import torch and Lightning, which
takes seconds.
"""

from __future__ import annotations

import signal
from types import FrameType

EXIT_STATUS = {"Ctrl-C": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report it


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
