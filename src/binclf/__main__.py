"""The ``binclf`` command (console script and ``python -m binclf``).

SIGTERM is handled from the first moment: importing torch and Lightning takes seconds, and a command stopped
then must still exit with 143 and leave no run folder behind.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

from binclf.interrupts import EXIT_STATUS, Terminated, raise_on_sigterm


def main() -> None:
    """:func:`binclf.cli.cli_main`, then a quick exit.

    Tearing down an interpreter that holds torch and Lightning takes one to two seconds, spent freeing
    thousands of modules: longer than some whole commands. By then the command has closed its files and
    loggers, so once the remaining threads have finished and the ``atexit`` handlers have run (what a
    normal exit does that matters), the process ends without the teardown.
    """
    raise_on_sigterm()
    try:
        from binclf.cli import cli_main  # seconds of imports: after the handler, and inside the try

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
    except KeyboardInterrupt:  # before the CLI could handle it: while importing
        print("binclf: stopped by Ctrl-C", file=sys.stderr)
        code = EXIT_STATUS["Ctrl-C"]
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # what a normal exit runs; CPython has no public name for it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
