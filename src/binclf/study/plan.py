"""What a study runs: every cell of its grid with every seed, as ``binclf fit`` arguments, and which of those
runs are done already. Plain data and the standard library: the sweep's own process never loads Lightning.

A run counts as done once its ``result.json`` says ``ok`` for the same arguments and its checkpoints are
whole; running the same sweep again redoes only the missing and failed runs (and any whose settings changed).
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binclf.monitoring import RUN_LOGGER
from binclf.paths import inside

RESULT = "result.json"  # each run's outcome, in its folder
MADE_BY_THE_SWEEP = ".binclf-sweep-run"  # marks a run folder that a sweep made, and may therefore remove
# The settings the sweep gives every run itself: a grid or --args that set them would be overridden, or
# would override the sweep's budget and seeds, without a word.
OWNED = (
    "seed_everything",
    "data.seed",
    "torch_threads",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.check_val_every_n_epoch",
    "trainer.val_check_interval",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.logger",
)
# A seed is a numpy SeedSequence's entropy, and a torch seed: 0 to 2**32 - 1 for both.
_SEEDS = range(2**32)


@dataclass(frozen=True)
class Run:
    """One cell of the grid with one seed: the CLI arguments that train and test it."""

    name: str
    settings: dict[str, Any]
    seed: int
    directory: Path
    args: list[str]


def value_name(value: Any) -> str:
    """A grid value as it appears in run names and tables: ``0.2``, ``1`` for 1.0, ``Adam``, and a path by
    its file name (``emails.csv``). A float keeps as many digits as it takes to tell it apart from any other
    (``0.2000001``)."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return Path(value).name if isinstance(value, str) and "/" in value else str(value)


def plan(
    config: str,
    grid: dict[str, list[Any]],
    seeds: list[int],
    extra_args: list[str],
    sweep_dir: Path,
    epochs: int | None,
    steps: int | None,
    max_runs: int | None = None,
) -> list[Run]:
    """Every (cell, seed) of the grid, in a stable order, with the arguments for ``binclf fit``; refused,
    before any is made, if there would be more than ``max_runs``."""
    _check_kinds(grid, seeds, extra_args)
    if not grid:
        raise ValueError("the grid is empty: give --grid or a sweep config with grid:")
    owned = [key for key in grid if key in OWNED or key.startswith("trainer.logger.")]
    owned += [arg.split("=")[0][2:] for arg in extra_args if arg.split("=")[0][2:] in OWNED]
    if owned:
        raise ValueError(
            f"{owned[0]} is set by the sweep for every run (its budget: epochs or steps, its seeds: seeds); "
            "take it out of the grid and args"
        )
    bad_seeds = [seed for seed in seeds if isinstance(seed, bool) or seed not in _SEEDS]
    if bad_seeds:
        raise ValueError(f"seeds: {bad_seeds[0]} is not a seed: seeds are whole numbers from 0 to 2**32 - 1")
    count = math.prod(len(values) for values in grid.values()) * len(seeds)
    if max_runs is not None and count > max_runs:
        raise ValueError(
            f"the grid and seeds make {count:,} runs, more than max_runs={max_runs:,}: give fewer values, or "
            "raise --max_runs if you mean it"
        )
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
            directory = inside(sweep_dir / "runs", name, "a grid cell's run folder")
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
                f"--trainer.logger={RUN_LOGGER}",
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


def run_args(run: Run) -> list[str]:
    """The run's ``binclf fit`` arguments without the subcommand: what ``BinclfCLI("fit", ...)`` takes."""
    return run.args[1:]


# A stack's members may differ in these, and in data settings other than those that decide a network's shape
# or a batch's size: each member keeps its own data, seed and optimizer (binclf.study.stacked).
_SHAPING_DATA = ("data.dim", "data.batch_size")
_OWN_OPTIMIZER = ("model.optimizer.", "model.lr_scheduler.")
STACKABLE = "data settings, seeds and optimizer settings"  # what the runs of a stack may differ in


def stack_key(run: Run) -> tuple:
    """What the runs of one stack share: every grid setting but their data settings, seeds and optimizer or
    scheduler settings (their classes excepted). With an epoch budget, also the training size, so that their
    epochs have one length."""
    epoch_budget = not any(arg.startswith("--trainer.max_steps=") for arg in run.args)
    shared = (*_SHAPING_DATA, "data.num_samples") if epoch_budget else _SHAPING_DATA
    return tuple(
        (key, value)
        for key, value in run.settings.items()
        if (not key.startswith("data.") or key in shared) and not key.startswith(_OWN_OPTIMIZER)
    )


def tasks(runs: list[Run], workers: int, mode: str) -> list[list[Run]]:
    """What the workers are given: with ``mode="stacked"``, each group of runs that share a
    :func:`stack_key` as one stack, and the largest halved only while a worker would otherwise sit idle.
    A half that stacks costs no more time than the whole (a stack's cost per step is mostly shared), and
    runs that turn out not to stack (a callback, a scheduler that follows the validation loss) then run
    side by side instead of one after the other. With ``"solo"``, one run each."""
    if mode == "solo":
        return [[run] for run in runs]
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(stack_key(run), []).append(run)
    stacks = list(groups.values())
    while len(stacks) < workers:
        largest = max(stacks, key=len)
        if len(largest) == 1:
            break
        stacks.remove(largest)
        stacks += [largest[0::2], largest[1::2]]  # mixed cells in each half
    return sorted(stacks, key=len, reverse=True)  # the longest first, so none starts last


def _check_kinds(grid: Any, seeds: Any, extra_args: Any) -> None:
    """The grid, seeds and extra arguments as the sweep's parser reads them: plain lists and a mapping, whose
    items are checked here, each in one step (see :func:`binclf.study.sweep.parser`). The error line cuts a
    long value short."""
    if not isinstance(grid, dict) or not all(isinstance(key, str) for key in grid):
        raise ValueError("grid must map setting names to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list):
            raise ValueError(f"grid.{key} is {values!r}, not a list of values")
        odd = next((value for value in values if not isinstance(value, (str, int, float))), None)
        if odd is not None:
            raise ValueError(f"grid.{key}: {odd!r} is not a number, a boolean or a text")
    if not isinstance(seeds, list):
        raise ValueError(f"seeds is {seeds!r}, not a list of whole numbers")
    if not isinstance(extra_args, list) or not all(isinstance(arg, str) for arg in extra_args):
        raise ValueError("args must be a list of binclf fit arguments, e.g. [--data.num_samples=1000]")


def fresh_run_folder(run: Run) -> None:
    """Give a run an empty folder: one that a sweep made for an earlier attempt is removed first; any other
    thing in the way is left alone, and the run fails, naming it."""
    directory = run.directory
    if directory.is_symlink() or (directory.exists() and not (directory / MADE_BY_THE_SWEEP).is_file()):
        raise FileExistsError(f"{directory} is in the way, and this sweep did not make it: move it elsewhere")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / MADE_BY_THE_SWEEP).touch()


def read_result(run: Run) -> dict[str, Any] | None:
    """The run's ``result.json``, or ``None`` where there is none, or it is not this run's result as a
    worker writes it (damaged or edited): a file may be anyone's, so every field is checked (:func:`_valid`)
    before the sweep counts the run as done or publishes a number of it."""
    path = run.directory / RESULT
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > _LARGEST_RESULT:
            return None
        recorded = json.loads(path.read_text())  # NaN and Infinity too: _valid refuses them where used
    except (OSError, ValueError):
        return None
    return recorded if _valid(recorded, run) else None


_LARGEST_RESULT = 1_000_000  # bytes: a result is a few kilobytes, a histogram included


def _valid(recorded: Any, run: Run) -> bool:
    """Whether ``recorded`` is this run's result: its name, seed and settings, a status, finite test metrics,
    and a histogram whose counts fit its edges."""
    if not isinstance(recorded, dict) or recorded.get("status") not in ("ok", "failed"):
        return False
    if recorded.get("run") != run.name or recorded.get("seed") != run.seed:
        return False
    if any(recorded.get(key) != value for key, value in run.settings.items()):
        return False
    numbers = [value for key, value in recorded.items() if key.startswith("test/") or key == "wall_seconds"]
    if not all(_finite(value) for value in numbers):
        return False
    if not isinstance(recorded.get("error", ""), str) or not isinstance(recorded.get("args", []), list):
        return False
    stack_size = recorded.get("stack_size", 1)
    if not (type(stack_size) is int and stack_size >= 1):
        return False
    histogram = recorded.get("histogram")
    if histogram is None:
        return True
    edges = histogram.get("edges") if isinstance(histogram, dict) else None
    parts = [edges, histogram.get("a"), histogram.get("b")] if edges is not None else []
    classes, axis = (histogram.get("classes", ["a", "b"]), histogram.get("axis", "")) if parts else ([], "")
    if not (isinstance(classes, list) and len(classes) == 2 and all(isinstance(c, str) for c in classes)):
        return False
    if not isinstance(axis, str):
        return False
    return (
        bool(parts)
        and all(isinstance(part, list) and all(_finite(v) for v in part) for part in parts)
        and len(edges) >= 2
        and len(histogram["a"]) == len(histogram["b"]) == len(edges) - 1
    )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
