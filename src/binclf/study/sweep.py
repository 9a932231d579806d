"""``binclf-sweep``: the same ``binclf fit`` and ``test`` over a grid of settings and seeds, in parallel.

Each run is the real CLI (``run_cli``) on the base config plus its cell's overrides, so a sweep trains exactly
what ``binclf fit`` would. Results land in one sweep folder:

    <root>/<name>/runs/<run>/        one run: TensorBoard events, checkpoints, figures, output.log,
                                     result.json
    <root>/<name>/results.csv        one row per run: settings, seed, status, test metrics, wall time, error
    <root>/<name>/*.png, summary/    the study's figures, as PNG and in TensorBoard

A run counts as done once its ``result.json`` says ``ok`` for the same arguments; running the same sweep
again redoes only the missing and failed runs (and any whose settings changed).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
import zipfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ArgumentParser

from binclf.command import EXIT_STATUS, StopOnce, check_config_files

_RESULT = "result.json"
_FIRST_COLUMNS = ["run", "seed", "status"]
_LAST_COLUMNS = ["wall_seconds", "error"]


@dataclass(frozen=True)
class Run:
    """One cell of the grid with one seed: the CLI arguments that train and test it."""

    name: str
    settings: dict[str, Any]
    seed: int
    directory: Path
    args: list[str]


def value_name(value: Any) -> str:
    """A grid value as it appears in run names and tables: ``0.2``, ``1`` for 1.0, ``Adam``. A float keeps
    as many digits as it takes to tell it apart from any other (``0.2000001``)."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


def plan(
    config: str,
    grid: dict[str, list[Any]],
    seeds: list[int],
    extra_args: list[str],
    sweep_dir: Path,
    epochs: int | None,
    steps: int | None,
) -> list[Run]:
    """Every (cell, seed) of the grid, in a stable order, with the arguments for ``binclf fit``."""
    if not grid:
        raise ValueError("the grid is empty: give --grid or a sweep config with grid:")
    for key, values in grid.items():
        if not values:
            raise ValueError(f"grid.{key} has no values")
        names = [value_name(value) for value in values]
        repeated = next((name for name in names if names.count(name) > 1), None)
        if repeated is not None:
            same = [repr(value) for value in values if value_name(value) == repeated]
            raise ValueError(f"grid.{key} lists {' and '.join(same)}, which name the same run ({repeated})")
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"seeds lists a seed twice: {seeds}")
    if (epochs is None) == (steps is None):
        raise ValueError("give the budget as exactly one of epochs or steps")
    for name, budget in [("epochs", epochs), ("steps", steps)]:
        if budget is not None and budget < 1:
            raise ValueError(f"{name} must be at least 1, got {budget}: every run must end")
    if steps is not None:
        # A fixed number of optimizer steps whatever the training size: epochs run until the steps are spent,
        # and validation (for the best checkpoint) happens every tenth of the budget instead of every epoch.
        budget = [
            f"--trainer.max_steps={steps}",
            "--trainer.max_epochs=-1",
            "--trainer.check_val_every_n_epoch=null",
            f"--trainer.val_check_interval={max(1, steps // 10)}",
        ]
    else:
        budget = [f"--trainer.max_epochs={epochs}"]
    runs = []
    for values in itertools.product(*grid.values()):
        settings = dict(zip(grid, values, strict=True))
        for seed in seeds:
            cell = ",".join(f"{key.split('.')[-1]}={value_name(value)}" for key, value in settings.items())
            name = f"{cell},seed={seed}"
            directory = sweep_dir / "runs" / name
            args = [
                "fit",
                "-c",
                config,
                *extra_args,
                *budget,
                *(f"--{key}={value}" for key, value in settings.items()),
                f"--seed_everything={seed}",
                f"--data.seed={seed}",
                "--torch_threads=1",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false",
                "--trainer.logger=TensorBoardLogger",
                f"--trainer.logger.save_dir={directory.parent}",
                "--trainer.logger.name=",
                f"--trainer.logger.version={name}",
            ]
            runs.append(Run(name, settings, seed, directory, args))
    clash = next((name for name, count in Counter(run.name for run in runs).items() if count > 1), None)
    if clash is not None:
        raise ValueError(
            f"two grid cells would share the run folder {clash}: give the grid keys distinct ends"
        )
    return runs


def read_result(run: Run) -> dict[str, Any] | None:
    """The run's ``result.json``, or ``None`` where there is none or it is not a result (damaged, say)."""
    try:
        recorded = json.loads((run.directory / _RESULT).read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) and "status" in recorded else None


def finished(run: Run) -> bool:
    """Whether the run succeeded with exactly these arguments (a changed config or budget reruns it), and
    its checkpoints are still there and whole: a result without them cannot be tested again."""
    recorded = read_result(run)
    if recorded is None or recorded.get("status") != "ok" or recorded.get("args") != run.args:
        return False
    checkpoints = list((run.directory / "checkpoints").glob("*.ckpt"))
    return bool(checkpoints) and all(_whole(path) for path in checkpoints)


def _whole(checkpoint: Path) -> bool:
    """Whether a checkpoint file is a whole archive: torch saves a zip, whose every member has a checksum."""
    try:
        with zipfile.ZipFile(checkpoint) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def check_arguments(run: Run) -> None:
    """Parse one run's ``binclf fit`` arguments as ``binclf`` would, in a process of its own (the sweep
    never loads Lightning): a grid key or an argument that no ``fit`` accepts is refused before any run."""
    command = [sys.executable, "-m", "binclf", *run.args, "--print_config"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        raise ValueError(
            f"binclf fit refuses the runs' arguments: {lines[-1].removeprefix('binclf: error: ')}"
        )


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Hold ``<sweep>/.lock`` for the sweep's life: a second sweep in the same folder is refused. The
    operating system releases the lock when the process ends, however it ends."""
    with (sweep_dir / ".lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"another binclf-sweep is running in {sweep_dir} (it holds {sweep_dir / '.lock'})"
            ) from None
        yield


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


def execute(run: Run) -> dict[str, Any]:
    """Fit, then test the best checkpoint in the same process; record the outcome, whatever it is, unless
    the sweep is being stopped: then the run is left unfinished, to be redone by the next sweep."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    # Imported here, in the worker, so the parent never loads Lightning.
    from binclf.cli import run_cli
    from binclf.command import error_message
    from binclf.safe_io import atomic_write

    result: dict[str, Any] = {"run": run.name, "seed": run.seed, **run.settings}
    start = time.perf_counter()
    log = run.directory / "output.log"
    try:
        shutil.rmtree(run.directory, ignore_errors=True)  # a failed or interrupted earlier attempt
        run.directory.mkdir(parents=True)
        with _output_to(log):
            try:
                cli = run_cli(run.args)
                cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
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
        atomic_write(run.directory / _RESULT, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
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
        shutil.rmtree(run.directory, ignore_errors=True)  # a failed or interrupted earlier attempt
        try:
            run.directory.mkdir(parents=True)
            ready.append(run)
        except OSError:  # a run that cannot even have its folder fails alone, as it would solo
            unready.append(run)
    if len(ready) < 2:
        return [execute(run) for run in runs]
    if unready:
        return execute_stack(ready) + [execute(run) for run in unready]
    log = runs[0].directory / "output.log"  # the stack's, beside its first run's
    try:
        with _output_to(log):
            try:
                outcomes = _train_and_test_stack(runs)
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
        return [execute(run) for run in runs]
    seconds = round((time.perf_counter() - start) / len(runs), 3)  # the stack's time, shared by its runs
    results = []
    for run, outcome in zip(runs, outcomes, strict=True):
        result = {"run": run.name, "seed": run.seed, **run.settings, **outcome}
        result |= {"wall_seconds": seconds, "args": run.args}
        with contextlib.suppress(OSError):
            text = json.dumps(result, indent=1)
            atomic_write(run.directory / _RESULT, lambda tmp, text=text: tmp.write_text(text))
        results.append(result)
    return results


def _train_and_test_stack(runs: list[Run]) -> list[dict[str, Any]] | None:
    """Each run's status, error, test metrics and training histogram, or ``None`` if the runs cannot stack.

    A run whose settings or data are bad fails alone, with the message its solo run would give; the others
    are built, trained and tested as if it were not there.
    """
    from binclf.cli import run_cli
    from binclf.command import error_message
    from binclf.study.stacked import finish_member, forward_problem, member_of, stackable, train_stack

    template, members, outcomes = None, {}, {}
    for run in runs:
        try:
            if template is None:  # the first run that builds: the stack's settings, and its parser
                template = run_cli(run_args(run), run=False)
                reason = stackable(template)
                if reason is not None:
                    print(f"these runs train solo: {reason}")
                    return None
            member = member_of(template, run_args(run), run.name, str(run.directory.parent))
            member.datamodule.setup("fit")
            if not members:  # the network, probed on a few rows of the first member's own data
                probe = member.datamodule.transform(member.datamodule.train_set.features[:8])
                reason = forward_problem(member.model.network, probe)
                if reason is not None:
                    print(f"these runs train solo: {reason}")
                    return None
            members[run.name] = member
        except Exception as error:  # as ``execute`` records a solo run that fails
            traceback.print_exc()
            outcomes[run.name] = {"status": "failed", "error": error_message(error)}
    if members and len({tuple(p.shape for p in m.model.network.parameters()) for m in members.values()}) > 1:
        print("these runs train solo: their networks differ in shape")
        return None
    if members:
        trainer = template.trainer  # the solo run's trainer, as built: its settings, Lightning's defaults
        accelerator = template.config.trainer.accelerator  # as the solo runs would use
        train_stack(
            list(members.values()),
            steps=trainer.max_steps,
            val_every=trainer.val_check_interval,
            log_every=trainer.log_every_n_steps,
            batch_size=next(iter(members.values())).datamodule.batch_size,
            accelerator=accelerator,
        )
    for name, member in members.items():
        if member.failure is not None:
            outcomes[name] = {"status": "failed", "error": member.failure}
            continue
        try:
            metrics = finish_member(member, Path(member.logger.log_dir), accelerator)
        except Exception as error:
            traceback.print_exc()
            outcomes[name] = {"status": "failed", "error": error_message(error)}
            continue
        histogram = training_histogram(member.datamodule)
        outcomes[name] = {
            "status": "ok",
            "error": "",
            **dict(sorted(metrics.items())),
            "histogram": histogram,
        }
    return [outcomes[run.name] for run in runs]


def run_args(run: Run) -> list[str]:
    """The run's ``binclf fit`` arguments without the subcommand: what ``run_cli(..., run=False)`` takes."""
    return run.args[1:]


def tasks(runs: list[Run], workers: int, mode: str) -> list[list[Run]]:
    """What the workers are given: with ``mode="stacked"``, the runs that share every setting but their data
    settings and seeds, as stacks split evenly over the workers; with ``"solo"``, one run each.

    The data settings that decide a network's shape or a batch's size (``data.dim``, ``data.batch_size``)
    stay in what the runs of a stack share.
    """
    if mode == "solo":
        return [[run] for run in runs]
    shared = {"data.dim", "data.batch_size"}
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        key = tuple((k, v) for k, v in run.settings.items() if not k.startswith("data.") or k in shared)
        groups.setdefault(key, []).append(run)
    stacks = []
    for group in groups.values():
        parts = min(workers, len(group))
        stacks += [group[i::parts] for i in range(parts)]  # round robin: stacks of equal size, mixed cells
    return stacks


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
    return {"edges": edges.tolist(), "a": counts["a"].tolist(), "b": counts["b"].tolist()}


def _worker_start(sweep: int) -> None:
    import threading

    import torch

    # A sweep killed outright (SIGKILL, the out-of-memory killer) cannot end its workers: they end themselves.
    threading.Thread(target=_exit_without, args=(sweep,), daemon=True).start()

    # One intra-op thread per worker: several workers share the cores, and this model is too small to gain.
    torch.set_num_threads(1)
    # Ctrl-C reaches every process of the terminal; the sweep's own process stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.argv = sys.argv[:1]  # each run's arguments are passed to the CLI directly, not through argv


def _exit_without(sweep: int) -> None:
    """End this worker once ``sweep``, the process that started it, has gone: its parent is then another."""
    while os.getppid() == sweep:
        time.sleep(1)
    os._exit(1)


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
            writer = csv.DictWriter(file, fieldnames=columns, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    from binclf.safe_io import atomic_write  # here: it loads torch, which the sweep's own process needs late

    atomic_write(path, write)
    return rows


class Progress:
    """The progress bar over the runs, and this session's results by run name, for either executor."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.results: dict[str, dict[str, Any]] = {}
        self.bar = tqdm(total=total, unit="run", file=sys.stdout, dynamic_ncols=True)

    def record(self, task_results: list[dict[str, Any]]) -> None:
        for result in task_results:
            self.results[result["run"]] = result
            if result["status"] != "ok":
                self.bar.write(f"failed: {result['run']}: {result['error']}")
        self.bar.set_postfix(failed=sum(r["status"] != "ok" for r in self.results.values()))
        self.bar.update(len(task_results))

    def close(self) -> None:
        self.bar.close()


def lost(task: list[Run], error: BaseException) -> list[dict[str, Any]]:
    """The results of a task whose worker died under it."""
    return [
        {
            "run": run.name,
            "seed": run.seed,
            **run.settings,
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
        }
        for run in task
    ]


def run_task(task: list[Run]) -> list[dict[str, Any]]:
    """A stack, or one run alone: what one worker does at a time, on this machine or on a Ray node."""
    return execute_stack(task) if len(task) > 1 else [execute(task[0])]


def run_sweep(
    runs: list[Run], workers: int, mode: str = "stacked", ray: dict[str, Any] | None = None
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
    progress = Progress(len(todo))
    try:
        if ray is not None:
            from binclf.study.ray_executor import run_on_ray

            run_on_ray(todo, mode=mode, workers=workers, record=progress.record, **ray)
        else:
            _run_here(tasks(todo, workers, mode), workers, progress.record)
    finally:
        progress.close()
    return progress.results


def _run_here(work: list[list[Run]], workers: int, record: Any) -> None:
    # A fresh interpreter per worker: no inherited torch threads or locks.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_start, initargs=(os.getpid(),)
    ) as pool:
        try:
            futures = {pool.submit(run_task, task): task for task in work}
            for future in as_completed(futures):
                try:
                    record(future.result())
                except Exception as error:  # the worker process itself died
                    record(lost(futures[future], error))
        except BaseException:  # stopped: no run may go on without the sweep that started it
            for signal_number in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut this short
                signal.signal(signal_number, signal.SIG_IGN)
            pool.shutdown(wait=False, cancel_futures=True)
            _end_workers()
            raise


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
    parser = ArgumentParser(prog="binclf-sweep", description=__doc__.splitlines()[0], default_config_files=[])
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="a sweep YAML file")
    parser.add_argument("--name", type=str, default="sweep", help="the sweep folder's name")
    parser.add_argument("--root", type=str, default="lightning_logs/sweeps", help="where sweep folders go")
    parser.add_argument("--base_config", type=str, default="configs/default.yaml", help="binclf fit -c ...")
    parser.add_argument("--args", type=list[str], default=[], help="extra binclf fit arguments for every run")
    parser.add_argument(
        "--grid",
        type=dict[str, list[int | float | str]],
        default={},
        help="setting: [values], e.g. data.scale",
    )
    parser.add_argument(
        "--seeds", type=list[int], default=[0], help="model and data seed of each cell's runs"
    )
    parser.add_argument("--epochs", type=int | None, default=None, help="budget: epochs per run")
    parser.add_argument("--steps", type=int | None, default=None, help="budget: optimizer steps per run")
    parser.add_argument("--workers", type=int, default=0, help="parallel runs; 0 means one per core")
    parser.add_argument(
        "--mode",
        type=Literal["stacked", "solo"],
        default="stacked",
        help="stacked: runs that differ only in data settings and seeds train together, a stack per worker; "
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
    try:
        check_config_files(sys.argv[1:] if args is None else args)
    except ValueError as error:
        sys.exit(f"binclf-sweep: error: {error}")
    config = parser().parse_args(args)
    sweep_dir = Path(config.root) / config.name
    try:
        if config.workers < 0:
            raise ValueError(f"workers must be 0 (one per core) or more, got {config.workers}")
        runs = plan(
            config.base_config, config.grid, config.seeds, config.args, sweep_dir, config.epochs, config.steps
        )
        if len(runs) > config.max_runs:
            raise ValueError(
                f"the grid and seeds make {len(runs):,} runs, more than max_runs={config.max_runs:,}: "
                "give fewer values, or raise --max_runs if you mean it"
            )
        x_key = config.plot.x or next(iter(config.grid))
        line_key = config.plot.lines or (list(config.grid)[1] if len(config.grid) > 1 else None)
        for name, key in [("plot.x", x_key), ("plot.lines", line_key)]:
            if key is not None and key not in config.grid:
                raise ValueError(f"{name} is {key!r}, which is not a grid key ({', '.join(config.grid)})")
        if not all(finished(run) for run in runs):
            check_arguments(runs[0])  # every run has the same keys; values are each run's own to refuse
    except ValueError as error:
        sys.exit(f"binclf-sweep: error: {error}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    try:
        with sweep_lock(sweep_dir):
            _sweep(config, runs, sweep_dir, x_key, line_key)
    except ValueError as error:
        sys.exit(f"binclf-sweep: error: {error}")


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
        results = run_sweep(runs, workers, config.mode, ray)
        rows = write_results(runs, sweep_dir / "results.csv", results)
        from binclf.study.report import report  # matplotlib only once the runs are done

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
