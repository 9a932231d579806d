"""Files written whole or not at all: everything binclf writes (checkpoints, figures, predictions, a sweep's
results) goes through :func:`atomic_write` (Lightning's checkpoints through
:class:`binclf.checkpoint_io.SafeCheckpointIO`). Every cell of a CSV file binclf writes goes through
:func:`spreadsheet_safe`. The standard library only: a sweep's own process writes its results with these
and never loads torch or Lightning."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` to a temporary file beside ``path``, then rename it over ``path``: a process killed
    mid-write leaves the old file whole, never a torn one. The name carries the process id, so processes
    writing the same file never share a temporary one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def spreadsheet_safe(value: object) -> str:
    """``value`` as a CSV cell that a spreadsheet shows as text, never runs as a formula: text that starts
    with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'`` (OWASP's rule against
    CSV injection); numbers, negative ones included, stay as they are; ``None`` is empty, as in :mod:`csv`."""
    text = "" if value is None else str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(text)
        except ValueError:
            return "'" + text
    return text
