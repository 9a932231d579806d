"""How much memory a command may plan to use: a setting that would need more is refused before anything is
allocated, with one line that names it and the size, instead of ending in the out-of-memory killer.

The limit is half this machine's physical memory, since a run holds more than its raw data and weights
(the batches it gathers, the copies that evaluation and figures make); ``BINCLF_MEMORY_LIMIT_GB`` sets
another (a machine shared with other jobs, or one with swap you mean to use).
"""

from __future__ import annotations

import os

MEMORY_LIMIT_VARIABLE = "BINCLF_MEMORY_LIMIT_GB"


def memory_limit() -> int:
    """Bytes a command may plan to hold: ``BINCLF_MEMORY_LIMIT_GB``, else half the machine's memory."""
    configured = os.environ.get(MEMORY_LIMIT_VARIABLE)
    if configured:
        try:
            gigabytes = float(configured)
        except ValueError:
            gigabytes = -1.0
        if not 0 < gigabytes < 1e9:
            raise ValueError(f"{MEMORY_LIMIT_VARIABLE} must be a positive number of GB, got {configured!r}")
        return int(gigabytes * 1e9)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def require_memory(setting: str, nbytes: int, what: str) -> None:
    """Refuse ``setting`` if what it asks for, ``nbytes`` of ``what``, is more than :func:`memory_limit`."""
    limit = memory_limit()
    if nbytes <= limit:
        return
    if os.environ.get(MEMORY_LIMIT_VARIABLE):
        allowed = f"{MEMORY_LIMIT_VARIABLE} allows ({_size(limit)}): lower it, or raise that limit"
    else:
        allowed = (
            f"the {_size(limit)} this machine has: lower it, or set {MEMORY_LIMIT_VARIABLE} if you mean it"
        )
    raise ValueError(f"{setting} would hold {_size(nbytes)} of {what} in memory, more than {allowed}")


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes} bytes"
