"""``binclf-sweep``: the same ``binclf fit`` and ``test`` over a grid of settings and seeds, in parallel.

Each run is the real CLI (``run_command``) on the base config plus its cell's overrides, so a sweep trains
exactly what ``binclf fit`` would. Results land in one sweep folder:

    <root>/<name>/runs/<run>/        one run: TensorBoard events, checkpoints, figures, output.log,
                                     result.json
    <root>/<name>/results.csv        one row per run: settings, seed, status, test metrics, wall time,
                                     stack size, error
    <root>/<name>/*.png, summary/    the study's figures, as PNG and in TensorBoard

A run counts as done once its ``result.json`` says ``ok`` for the same arguments; running the same sweep
again redoes only the missing and failed runs (and any whose settings changed).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import importlib
import math
import multiprocessing
import os
import signal
import stat
import sys
import threading
import time
from argparse import ArgumentError
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ArgumentParser

from binclf.command import EXIT_STATUS, Terminated, check_config_files, error_message, raise_on_sigterm
from binclf.paths import inside, regular_file
from binclf.study.execute import (
    PROGRESS,
    SWEEP_PROCESS,
    fit_refusal,
    lost,
    read_progress,
    run_task,
    worker_start,
)
from binclf.study.plan import STACKABLE, Run, finished, plan, read_result, stack_key, tasks

_FIRST_COLUMNS = ["run", "seed", "status"]
_LAST_COLUMNS = ["wall_seconds", "stack_size", "error"]  # a stacked run's time is its stack's


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


def check_arguments(run: Run) -> None:
    """Parse one run's ``binclf fit`` arguments as ``binclf`` would, in a worker process (the sweep itself
    never loads Lightning): a grid key or an argument that no ``fit`` accepts is refused before any run.

    The first worker waits for Lightning's import, seconds on one core; meanwhile this process imports the
    report's plotting on another, rather than after the last run, when every run waits for it."""
    plotting = threading.Thread(target=importlib.import_module, args=("binclf.study.report",))
    plotting.start()
    try:
        with _worker_pool(1) as pool:
            refusal = pool.submit(fit_refusal, run.args).result()
    finally:
        plotting.join()
    if refusal is not None:
        raise ValueError(f"binclf fit refuses the runs' arguments: {refusal}")


@contextlib.contextmanager
def _worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """``workers`` worker processes (:func:`_worker_context`). Stopped, the sweep ends them first: no run,
    and no check, may go on without the sweep that started it."""
    with ProcessPoolExecutor(workers, mp_context=_worker_context(), initializer=worker_start) as pool:
        try:
            yield pool
        except BaseException:
            for signal_number in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut this short
                signal.signal(signal_number, signal.SIG_IGN)
            pool.shutdown(wait=False, cancel_futures=True)
            _end_workers()
            raise


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Hold ``<sweep>/.lock`` for the sweep's life: a second sweep in the same folder is refused. The
    operating system releases the lock when the process ends, however it ends. Opened without blocking
    and without following a link, so that a FIFO or a link put there is refused, not waited on."""
    path = sweep_dir / ".lock"
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | os.O_NOFOLLOW
    try:
        handle = os.open(path, flags, 0o644)
    except OSError as error:
        if error.errno in (errno.ENXIO, errno.ELOOP):  # a FIFO with no reader; a link
            raise ValueError(f"{path} is not a regular file: it cannot be the sweep's lock") from None
        raise ValueError(f"{path} cannot be the sweep's lock: {error.strerror}") from None
    with os.fdopen(handle, "a") as lock:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise ValueError(f"{path} is not a regular file: it cannot be the sweep's lock")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another binclf-sweep is running in {sweep_dir} (it holds {path})") from None
        yield


def _end_workers(grace_seconds: float = 10.0) -> None:
    """Stop every worker process: SIGTERM, which Lightning turns into a stop at the next step, then SIGKILL
    for any that has not ended within ``grace_seconds``. What they were running is redone next time."""
    workers = multiprocessing.active_children()
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join(grace_seconds)
        if worker.is_alive():
            worker.kill()
            worker.join()


def write_results(runs: list[Run], path: Path, fresh: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """``results.csv`` from every run's ``result.json``, else from this session's ``fresh`` results (a run
    that could not even write its file); runs never attempted get status ``missing``."""
    rows = []
    for run in runs:
        recorded = read_result(run) or fresh.get(run.name)
        if recorded is None:
            recorded = {"run": run.name, "seed": run.seed, **run.settings, "status": "missing", "error": ""}
        rows.append(recorded)
    settings = list(runs[0].settings) if runs else []
    metrics = sorted({key for row in rows for key in row if key.startswith("test/")})
    columns = _FIRST_COLUMNS[:1] + settings + _FIRST_COLUMNS[1:] + metrics + _LAST_COLUMNS

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow([spreadsheet_safe(column) for column in columns])
            writer.writerows([spreadsheet_safe(row.get(column, "")) for column in columns] for row in rows)

    # Here: it loads torch, which the sweep's own process needs late.
    from binclf.safe_io import atomic_write, spreadsheet_safe

    atomic_write(path, write)
    return rows


class Progress:
    """What a sweep says as its tasks end, for either executor: a line per stack or solo group, saying which
    it is and why, then a line per run. At a terminal a progress bar runs below them; into a file or a pipe
    the lines come alone, with no carriage returns. Keeps this session's results by run name."""

    def __init__(self, runs: list[Run], mode: str, every: float = 30.0) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.mode = mode
        self.every, self.started = every, time.monotonic()
        self.next_line = self.started + every
        # How many runs could share each run's stack: a run alone on its worker had partners, or had none.
        keys = Counter(stack_key(run) for run in runs)
        self.could_stack_with = {run.name: keys[stack_key(run)] - 1 for run in runs}
        self.bar = None
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=len(runs), unit="run", file=sys.stdout, dynamic_ncols=True)

    def say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def record(self, task_results: list[dict[str, Any]]) -> None:
        partners = self.could_stack_with.get(task_results[0]["run"], 0)
        self.say(group_line(task_results, self.mode, partners))
        for result in task_results:
            self.results[result["run"]] = result
            self.say(run_line(result))
        if self.bar is not None:
            self.bar.set_postfix(failed=sum(r["status"] != "ok" for r in self.results.values()))
            self.bar.update(len(task_results))

    def seconds_to_next(self) -> float | None:
        """How long until the next progress line is due; ``None`` (no line is ever due) at a terminal, where
        the progress bar shows how far the sweep is."""
        if self.bar is not None:
            return None
        return max(0.0, self.next_line - time.monotonic())

    def tick(self, running: list[list[Run]], submitted: int = 0) -> None:
        """Into a file, once every ``every`` seconds, a line on the tasks running now (a terminal has the
        progress bar): a stack's steps done of its steps due, which it writes into its first run's folder;
        and how many more tasks are ``submitted`` to Ray, begun or not, without steps to show."""
        now = time.monotonic()
        if now < self.next_line or self.bar is not None:
            return
        self.next_line = now + self.every
        parts = [running_part(task) for task in running]
        if submitted:
            parts.append(f"{submitted} more tasks submitted to the cluster")
        parts = parts or ["waiting for a worker"]
        self.say(f"running, {now - self.started:.0f} s in: " + "; ".join(parts))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def running_part(task: list[Run]) -> str:
    """``stack of 4 (first run, ...): step 1200 of 3000``, or ``run <name>`` for a run alone."""
    if len(task) == 1:
        return f"run {task[0].name}"
    steps = read_progress(task[0].directory / PROGRESS)
    done = f"step {steps[0]} of {steps[1]}" if steps is not None else "building"
    return f"stack of {len(task)} ({task[0].name}, ...): {done}"


def group_line(results: list[dict[str, Any]], mode: str, partners: int = 0) -> str:
    """Whether a task's runs trained as a stack or solo, and why; ``partners``: how many other runs of this
    sweep could have shared a lone run's stack."""
    names = ", ".join(result["run"] for result in results)
    trained = results[0].get("trained", "lost")
    if trained == "stacked":
        why = f"they differ only in {STACKABLE}, so they train together"
        return f"stack of {len(results)} runs ({names}): {why}"
    if trained.startswith("solo: "):
        return f"solo, {len(results)} runs one after the other ({names}): {trained.removeprefix('solo: ')}"
    if trained == "solo":
        if mode == "solo":
            why = "--mode solo"
        elif partners:
            why = f"its stack of {partners + 1} runs was split over workers that would otherwise sit idle"
        else:
            why = f"no other run differs from it only in {STACKABLE}"
        return f"solo ({names}): {why}"
    return f"{trained} ({names})"


def run_line(result: dict[str, Any]) -> str:
    """One finished run: ``run <name>: ok, acc 99.37 %, 12.3 s``, or why it failed."""
    if result["status"] == "ok" and "test/acc" in result:
        line = f"run {result['run']}: ok, acc {100 * result['test/acc']:.2f} %"
    else:
        line = f"run {result['run']}: {result['status']}, {result.get('error') or 'no test metrics'}"
    seconds, stack_size = result.get("wall_seconds"), result.get("stack_size")
    if not isinstance(seconds, (int, float)):
        return line
    return f"{line}, {seconds:.1f} s" + (f" for its stack of {stack_size}" if stack_size else "")


def run_sweep(
    runs: list[Run],
    workers: int,
    mode: str = "stacked",
    ray: dict[str, Any] | None = None,
    progress_every: float = 30.0,
) -> dict[str, dict[str, Any]]:
    """Run what is not finished yet, stacked or solo (see :func:`tasks`), with a progress bar over the runs:
    on ``workers`` processes here, or with ``ray`` settings as Ray tasks on a cluster. Returns this session's
    results by run name."""
    todo = [run for run in runs if not finished(run)]
    skipped = len(runs) - len(todo)
    where = "the Ray cluster" if ray is not None else f"{workers} workers"
    print(f"{len(runs)} runs, {skipped} already finished, {len(todo)} to run on {where}")
    if not todo:
        return {}
    progress = Progress(todo, mode, progress_every)
    try:
        if ray is not None:
            from binclf.study.ray_executor import run_on_ray

            run_on_ray(todo, mode=mode, workers=workers, progress=progress, **ray)
        else:
            _run_here(tasks(todo, workers, mode), workers, progress)
    finally:
        progress.close()
    return progress.results


def _run_here(work: list[list[Run]], workers: int, progress: Progress) -> None:
    with _worker_pool(workers) as pool:
        futures = {pool.submit(run_task, task): task for task in work}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=progress.seconds_to_next(), return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    progress.record(future.result())
                except Exception as error:  # the worker process itself died
                    progress.record(lost(futures[future], error))
            progress.tick([futures[future] for future in pending if future.running()])


def _worker_context() -> multiprocessing.context.BaseContext:
    """How workers start: forked from a server process that has imported what a run needs and run nothing, so
    that each starts at once with no torch threads or locks inherited; where there is no fork, each is a
    fresh interpreter that imports it all itself."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    os.environ[SWEEP_PROCESS] = str(os.getpid())  # for the server to know itself (binclf.study.forkserver)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["binclf.study.forkserver"])
    return context


def _on_gpu(base_config: str, args: list[str]) -> bool:
    """Whether the runs ask for a GPU, by the base config or the extra arguments (the last one decides)."""
    import yaml

    accelerator = None
    with contextlib.suppress(OSError, yaml.YAMLError, KeyError, TypeError):
        accelerator = yaml.safe_load(Path(base_config).read_text())["trainer"]["accelerator"]
    for arg in args:
        if arg.startswith("--trainer.accelerator="):
            accelerator = arg.split("=", 1)[1]
    return accelerator in ("gpu", "cuda")


def parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="binclf-sweep", description=__doc__.splitlines()[0], default_config_files=[], exit_on_error=False
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="a sweep YAML file")
    parser.add_argument("--name", type=str, default="sweep", help="the sweep folder's name")
    parser.add_argument("--root", type=str, default="lightning_logs/sweeps", help="where sweep folders go")
    parser.add_argument("--base_config", type=str, default="configs/default.yaml", help="binclf fit -c ...")
    # Plain list and dict, whose items plan() checks: jsonargparse 4.53 adapts a typed list in time that
    # grows with the square of its length (fixed upstream, jsonargparse pull request 975), and a grid or
    # seed list of thousands must be refused at once, not after minutes.
    parser.add_argument("--args", type=list, default=[], help="extra binclf fit arguments for every run")
    parser.add_argument(
        "--grid", type=dict, default={}, help="setting: [values], e.g. data.scale: numbers, booleans or texts"
    )
    parser.add_argument("--seeds", type=list, default=[0], help="model and data seed of each cell's runs")
    parser.add_argument("--epochs", type=int | None, default=None, help="budget: epochs per run")
    parser.add_argument("--steps", type=int | None, default=None, help="budget: optimizer steps per run")
    parser.add_argument("--workers", type=int, default=0, help="parallel runs; 0 means one per core")
    parser.add_argument(
        "--progress_every",
        type=float,
        default=30.0,
        help="seconds between progress lines when the output goes to a file or a pipe",
    )
    parser.add_argument(
        "--mode",
        type=Literal["stacked", "solo"],
        default="stacked",
        help=f"stacked: runs that differ only in {STACKABLE} train together, a stack per worker; "
        "solo: each run is a binclf fit of its own",
    )
    parser.add_argument(
        "--executor",
        type=Literal["local", "ray"],
        default="local",
        help="local: worker processes here; ray: Ray tasks on a cluster (pip install 'binclf[ray]')",
    )
    parser.add_argument(
        "--ray_address",
        type=str | None,
        default=None,
        help="the Ray cluster: host:port of its head, or auto inside a Ray job; unset: Ray starts here",
    )
    parser.add_argument("--ray_cpus", type=float, default=1.0, help="CPUs each Ray task asks for")
    parser.add_argument("--ray_gpus", type=float, default=0.0, help="GPUs each Ray task asks for")
    parser.add_argument(
        "--ray_retries", type=int, default=3, help="tries again for a task lost with its node"
    )
    parser.add_argument(
        "--max_runs",
        type=int,
        default=10_000,
        help="refuse a grid that makes more runs than this: a typo in a grid can otherwise ask for years",
    )
    parser.add_argument(
        "--plot.x", type=str | None, default=None, help="grid key on the x axis (default: first)"
    )
    parser.add_argument(
        "--plot.lines", type=str | None, default=None, help="grid key per line (default: second)"
    )
    return parser


def main(args: list[str] | None = None) -> None:
    """Entry point of ``binclf-sweep``. Ctrl-C or SIGTERM stops the workers, keeps every finished run and
    writes ``results.csv``; the same command then carries on."""
    raise_on_sigterm()  # from the first moment: a process the sweep starts is ended with it
    args = sys.argv[1:] if args is None else args
    try:
        check_config_files(args)
        config = parser().parse_args(args)
        sweep_dir = inside(Path(config.root), config.name, "--name")
        if config.workers < 0:
            raise ValueError(f"workers must be 0 (one per core) or more, got {config.workers}")
        if not 0 < config.progress_every < math.inf:
            every = config.progress_every
            raise ValueError(f"progress_every must be a positive number of seconds, got {every}")
        runs = plan(
            config.base_config,
            config.grid,
            config.seeds,
            config.args,
            sweep_dir,
            config.epochs,
            config.steps,
            config.max_runs,
        )
        x_key = config.plot.x or next(iter(config.grid))
        line_key = config.plot.lines or (list(config.grid)[1] if len(config.grid) > 1 else None)
        for name, key in [("plot.x", x_key), ("plot.lines", line_key)]:
            if key is not None and key not in config.grid:
                raise ValueError(f"{name} is {key!r}, which is not a grid key ({', '.join(config.grid)})")
        if not all(finished(run) for run in runs):
            regular_file(Path(config.base_config), "--base_config")
            check_arguments(runs[0])  # every run has the same keys; values are each run's own to refuse
    except (ValueError, ArgumentError, OSError) as error:
        sys.exit(f"binclf-sweep: error: {error_message(error)}")
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with sweep_lock(sweep_dir):
            _sweep(config, runs, sweep_dir, x_key, line_key)
    except (ValueError, OSError) as error:
        sys.exit(f"binclf-sweep: error: {error_message(error)}")


def _sweep(config: Any, runs: list[Run], sweep_dir: Path, x_key: str, line_key: str | None) -> None:
    """The sweep itself, once its settings are checked and its folder is locked."""
    # One stack per core; on a GPU one stack with every member, which keeps the device busier than a few. On
    # Ray, unset workers mean as many stacks as the cluster fits tasks.
    ray = None
    if config.executor == "ray":
        ray = {"address": config.ray_address, "cpus": config.ray_cpus, "gpus": config.ray_gpus}
        ray["retries"] = config.ray_retries
        workers = config.workers
    else:
        workers = config.workers or (1 if _on_gpu(config.base_config, config.args) else os.cpu_count() or 1)
    start = time.perf_counter()
    stopper = StopOnce()
    previous_handlers = stopper.install()
    try:
        results = run_sweep(runs, workers, config.mode, ray, config.progress_every)
        rows = write_results(runs, sweep_dir / "results.csv", results)
        from binclf.study.report import report  # imported as the arguments were checked, if they were

        report(rows, sweep_dir, x_key, line_key)
    except ValueError as error:  # the Ray cluster: not installed, not reachable, no shared storage
        sys.exit(f"binclf-sweep: error: {error}")
    except (KeyboardInterrupt, SystemExit):
        # Stopped by a signal; Ray hands the exception that our handler raised back as a SystemExit(1).
        if stopper.stopped_by is None:
            raise
        write_results(runs, sweep_dir / "results.csv", {})
        name = stopper.stopped_by
        print(f"binclf-sweep: stopped by {name}; finished runs are kept: run the same command to go on")
        sys.exit(EXIT_STATUS[name])
    finally:
        signal.signal(signal.SIGINT, previous_handlers[0])
        signal.signal(signal.SIGTERM, previous_handlers[1])
    failed = sum(row["status"] != "ok" for row in rows)
    elapsed = time.perf_counter() - start
    print(f"Ran {len(results)} runs in {elapsed:.0f} s; {len(rows) - failed} of {len(rows)} ok")
    print(f"Results: {sweep_dir / 'results.csv'}")
    print(f"Sweep directory: {sweep_dir}   (tensorboard --logdir {sweep_dir})")
    if failed:
        sys.exit(
            f"binclf-sweep: error: {failed} runs failed (see results.csv); run the same command to retry them"
        )


if __name__ == "__main__":
    main()
