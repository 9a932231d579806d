"""What the sweep's forkserver imports before it forks any worker (:func:`binclf.study.sweep._worker_context`
names this module): everything a run needs, imported once for all the workers.

The server keeps the sweep's output open; ending with its sweep, it would then tear all of that down again
(seconds, here) while whoever reads the sweep's output waits for the end of it. So it ends at once
instead. Only in the server: the process whose parent is the sweep that ``SWEEP_PROCESS`` names.
"""

from __future__ import annotations

import atexit
import os

import binclf.cli  # noqa: F401
from binclf.study.execute import SWEEP_PROCESS
from binclf.workarounds import end_now

if os.environ.get(SWEEP_PROCESS) == str(os.getppid()):
    atexit.register(end_now, 0)  # the server has nothing to finish: its workers end themselves
