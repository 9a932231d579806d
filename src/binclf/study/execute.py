"""What a sweep's worker does with one task (a stack of runs, or one run alone), on this machine or on a
Ray node: fit and test, and record each run's outcome in its ``result.json``, whatever it is."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from binclf.command import EXIT_STATUS
from binclf.study.plan import RESULT, Run, fresh_run_folder, run_args

STACK_LOG = "stack.log"
PROGRESS = "progress"  # a stack's steps done and due, "1200 3000", in its first run's folder
# The environment variable that holds the sweep's process id, for its forkserver to know itself.
SWEEP_PROCESS = "BINCLF_SWEEP"


def read_progress(path: Path) -> tuple[int, int] | None:
    """A stack's ``(steps done, steps due)`` from its progress file, or ``None`` where there is none yet (or
    it is being replaced, or is not what a stack writes)."""
    try:
        fields = path.read_text()[:64].split()
    except OSError:
        return None
    if len(fields) != 2 or not all(field.isdigit() for field in fields):
        return None
    done, due = int(fields[0]), int(fields[1])
    return (done, due) if 0 <= done <= due else None


def run_task(task: list[Run]) -> list[dict[str, Any]]:
    """A stack, or one run alone: what one worker does at a time, on this machine or on a Ray node. Each
    result says how its run was ``trained``: ``stacked``, ``solo: <why>``, or ``solo`` for a run alone."""
    return execute_stack(task) if len(task) > 1 else [execute(task[0])]


def execute(run: Run, trained: str = "solo") -> dict[str, Any]:
    """Fit, then test the best checkpoint in the same process; record the outcome, whatever it is, unless
    the sweep is being stopped: then the run is left unfinished, to be redone by the next sweep."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    # Imported here, in the worker, so the parent never loads Lightning.
    from binclf.cli import run_command
    from binclf.command import error_message
    from binclf.monitoring.messages import report
    from binclf.safe_io import atomic_write

    result: dict[str, Any] = {"run": run.name, "seed": run.seed, **run.settings, "trained": trained}
    start = time.perf_counter()
    log = run.directory / "output.log"
    try:
        fresh_run_folder(run)  # a failed or interrupted earlier attempt's is removed
    except OSError as error:  # the parent records the result: nothing is written into what is in the way
        return result | {"status": "failed", "error": str(error), "wall_seconds": 0.0, "args": run.args}
    try:
        with _output_to(log):
            try:
                cli = run_command(run.args)
                cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
                report("test", cli.trainer, cli.model)
            except SystemExit:
                raise  # a bad setting: the parser has printed its message, a traceback adds nothing
            except BaseException:
                traceback.print_exc()
                raise
        metrics = cli.trainer.callback_metrics
        result |= {"status": "ok", "error": ""}
        result |= {key: float(value) for key, value in sorted(metrics.items()) if key.startswith("test/")}
        result["histogram"] = training_histogram(cli.datamodule)
    except (Exception, SystemExit) as error:
        if isinstance(error, SIGTERMException) or getattr(error, "code", None) in EXIT_STATUS.values():
            raise  # the sweep is stopping its workers: this run is unfinished, not failed
        result |= {"status": "failed", "error": _parse_error(log) or error_message(error)}
    result["wall_seconds"] = round(time.perf_counter() - start, 3)
    result["args"] = run.args
    with contextlib.suppress(OSError):  # no run directory to write in: the parent records the result
        atomic_write(run.directory / RESULT, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
    return result


def execute_stack(runs: list[Run]) -> list[dict[str, Any]]:
    """Fit and test ``runs`` as one stack (:mod:`binclf.study.stacked`), each recorded as its solo run would
    be; if they cannot stack (another network, a scheduler, ...), run them solo, one after the other."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from binclf.command import error_message
    from binclf.safe_io import atomic_write

    start = time.perf_counter()
    ready, unready = [], []
    for run in runs:
        try:
            fresh_run_folder(run)  # a failed or interrupted earlier attempt's is removed
            ready.append(run)
        except OSError:  # a run that cannot even have its folder fails alone, as it would solo
            unready.append(run)
    if len(ready) < 2:
        return [execute(run) for run in runs]
    if unready:
        return execute_stack(ready) + [execute(run) for run in unready]
    log = runs[0].directory / STACK_LOG  # the stack's own output, beside its first run's
    try:
        with _output_to(log):
            try:
                outcomes, why_solo = _train_and_test_stack(runs)
            except SystemExit:
                raise
            except BaseException:
                traceback.print_exc()
                raise
    except (Exception, SystemExit) as error:
        if isinstance(error, SIGTERMException) or getattr(error, "code", None) in EXIT_STATUS.values():
            raise
        failure = {"status": "failed", "error": _parse_error(log) or error_message(error)}
        outcomes = [failure] * len(runs)
    if outcomes is None:
        return [execute(run, trained=f"solo: {why_solo}") for run in runs]
    seconds = round(time.perf_counter() - start, 3)  # the stack's: each of its runs took that long to end
    results = []
    for run, outcome in zip(runs, outcomes, strict=True):
        result = {"run": run.name, "seed": run.seed, **run.settings, "trained": "stacked", **outcome}
        result |= {"wall_seconds": seconds, "stack_size": len(runs), "args": run.args}
        with contextlib.suppress(OSError):
            text = json.dumps(result, indent=1)
            atomic_write(run.directory / RESULT, lambda tmp, text=text: tmp.write_text(text))
        results.append(result)
    return results


def _train_and_test_stack(runs: list[Run]) -> tuple[list[dict[str, Any]] | None, str]:
    """Each run's status, error, test metrics and training histogram; or ``None`` and why, if the runs
    cannot stack.

    A run whose settings or data are bad fails alone, with the message its solo run would give; the others
    are built, trained and tested as if it were not there. Each run's ``output.log`` holds its own test
    summary, as its solo run's would; the stack's own output goes to ``stack.log`` in the first run's folder.
    """
    from binclf.cli import BinclfCLI
    from binclf.command import error_message
    from binclf.study.stacked import (
        finish_member,
        forward_problem,
        member_of,
        stack_budget,
        stackable,
        train_stack,
    )

    template, members, outcomes = None, {}, {}
    for run in runs:
        try:
            if template is None:  # the first run that builds: the stack's settings, and its parser
                template = BinclfCLI("fit", run_args(run))
                reason = stackable(template.config, template.instantiated(template.config))
                if reason is not None:
                    print(f"these runs train solo: {reason}")
                    return None, reason
            member = member_of(template, run_args(run), run.name, str(run.directory.parent))
            member.datamodule.setup("fit")
            if not members:  # the network, probed on a few rows of the first member's own data
                probe = member.datamodule.transform(member.datamodule.train_set.features[:8])
                reason = forward_problem(member.model.network, probe)
                if reason is not None:
                    print(f"these runs train solo: {reason}")
                    return None, reason
            members[run.name] = member
        except Exception as error:  # as ``execute`` records a solo run that fails
            traceback.print_exc()
            outcomes[run.name] = {"status": "failed", "error": error_message(error)}
    if members and len({tuple(p.shape for p in m.model.network.parameters()) for m in members.values()}) > 1:
        reason = "their networks differ in shape"
        print(f"these runs train solo: {reason}")
        return None, reason
    if members:
        trainer = template.config.trainer  # the solo runs' trainer settings
        accelerator = trainer.accelerator
        batch_size = next(iter(members.values())).datamodule.batch_size
        budget = stack_budget(list(members.values()), trainer, batch_size)
        if isinstance(budget, str):
            print(f"these runs train solo: {budget}")
            return None, budget
        steps, val_every = budget
        train_stack(
            list(members.values()),
            steps=steps,
            val_every=val_every,
            log_every=trainer.log_every_n_steps or 50,  # Lightning's default where none is set
            batch_size=batch_size,
            accelerator=accelerator,
            progress_file=runs[0].directory / PROGRESS,
        )
    for name, member in members.items():
        if member.failure is not None:
            outcomes[name] = {"status": "failed", "error": member.failure}
            continue
        folder = Path(member.logger.log_dir)
        try:
            with _output_to(folder / "output.log"):  # the member's own: its checkpoint and test summary
                stack_log = runs[0].directory / STACK_LOG
                print(f"Trained in a stack of {len(members)} runs; the stack's own output: {stack_log}")
                try:
                    metrics = finish_member(member, folder, accelerator)
                except Exception:
                    traceback.print_exc()
                    raise
        except Exception as error:
            outcomes[name] = {"status": "failed", "error": error_message(error)}
            continue
        histogram = training_histogram(member.datamodule)
        outcomes[name] = {
            "status": "ok",
            "error": "",
            **dict(sorted(metrics.items())),
            "histogram": histogram,
        }
    return [outcomes[run.name] for run in runs], ""


def lost(task: list[Run], error: BaseException) -> list[dict[str, Any]]:
    """The results of a task whose worker died under it."""
    return [
        {
            "run": run.name,
            "seed": run.seed,
            **run.settings,
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "trained": "lost with its worker",
        }
        for run in task
    ]


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send everything this process prints (Python and C level) to ``path`` for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _parse_error(log: Path) -> str | None:
    """The message of a setting the CLI's parser refused (it prints usage, then ``error: ...``)."""
    lines = [line.strip() for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    start = next((i for i in reversed(range(len(lines))) if lines[i].startswith("error:")), None)
    if start is None:
        return None
    message = lines[start].removeprefix("error:").strip()
    if message.endswith(":") and start + 1 < len(lines):  # "Parser key "data":", then the reason
        message += " " + lines[start + 1]
    return message


def training_histogram(datamodule: Any, bins: int = 50) -> dict[str, list[float]] | None:
    """Class-wise counts of the training data along the data module's plotting coordinate, for the
    report's grid of cells: a few numbers in ``result.json`` instead of the data itself. ``None`` for a data
    module that is not an ``InMemoryDataModule``: its data cannot be drawn."""
    import numpy as np

    from binclf.data import InMemoryDataModule

    if not isinstance(datamodule, InMemoryDataModule):
        return None
    features, targets = datamodule.train_set
    coordinate = datamodule.project(features).numpy()
    value_range = datamodule.feature_range or (coordinate.min(), coordinate.max())
    edges = np.linspace(*value_range, bins + 1)
    labels = targets[:, 0].numpy()
    counts = {
        name: np.histogram(coordinate[labels == label], edges)[0] for name, label in (("a", 0), ("b", 1))
    }
    # The classes by the names the data gives them; unnamed (0 and 1), they are the article's a and b.
    names = [str(name) for name in datamodule.label_names]
    return {
        "edges": edges.tolist(),
        "a": counts["a"].tolist(),
        "b": counts["b"].tolist(),
        "classes": ["a", "b"] if names == ["0", "1"] else names,
        "axis": datamodule.projection_label,
    }


def fit_refusal(args: list[str]) -> str | None:
    """What ``binclf`` says when it refuses a run's arguments (``fit ...``), its error line without the
    ``binclf: error:`` prefix; ``None`` when it accepts them. Parsed as ``binclf <args> --print_config``
    parses them, in this worker: nothing is built."""
    import tempfile

    from binclf.main import cli_main

    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "output"
        try:
            with _output_to(output):
                cli_main([*args, "--print_config"])
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        if code in (0, None):
            return None
        said = code if isinstance(code, str) else output.read_text().strip()  # a message, or a status
        lines = said.splitlines() or [f"exit status {code}"]
    return lines[-1].removeprefix("binclf: error: ")


def worker_start() -> None:
    """Set up one of the sweep's worker processes."""
    import torch

    from binclf.main import prepare_process

    prepare_process()  # as the binclf command sets its process up: each run is such a command

    # A sweep killed outright (SIGKILL, the out-of-memory killer) cannot end its workers: they end themselves.
    threading.Thread(target=_exit_without_the_sweep, daemon=True).start()

    # One intra-op thread per worker: several workers share the cores, and this model is too small to gain.
    torch.set_num_threads(1)
    # Ctrl-C reaches every process of the terminal; the sweep's own process stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _exit_without_the_sweep() -> None:
    """End this worker once the sweep that started it has gone: the pipe it holds open to each of its workers
    (multiprocessing's sentinel of the parent process) then reads as closed."""
    from multiprocessing import parent_process
    from multiprocessing.connection import wait

    from binclf.workarounds import end_now

    wait([parent_process().sentinel])
    end_now(1)
