"""binclf-sweep given what an attacker or a careless user gives it: names and grid values that are paths,
settings the sweep owns, grids too large to build, special files, edited results and a SIGTERM while it
checks its arguments. Each goes through ``binclf-sweep``'s own ``main``; where the runs themselves do not
matter they are fabricated as finished (``finish_every_run``), so the sweep goes straight to its results."""

from __future__ import annotations

import csv
import json
import os
import select
import signal
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from helpers import DEFAULT_CONFIG, result_of
from hostile import Sentinels

from binclf.study import sweep
from binclf.study.execute import run_task
from binclf.study.plan import MADE_BY_THE_SWEEP, plan
from binclf.study.sweep import main, sweep_lock

CONFIGS = DEFAULT_CONFIG.parent
ONE_CELL = ['--grid={"data.scale": [0.5]}', "--epochs=1"]


def refusal(arguments: list[str]) -> str:
    """The one line ``binclf-sweep`` exits with."""
    with pytest.raises(SystemExit) as exit_:
        main(arguments)
    line = str(exit_.value.code)
    assert line.startswith("binclf-sweep: error: "), line
    assert "\n" not in line, line
    return line


def finish_every_run(arguments: list[str], **fields) -> list:
    """Make every run of the sweep that ``arguments`` describe look finished, as a worker leaves it: a
    whole checkpoint and a ``result.json`` with ``fields`` (test metrics, say) for the same arguments."""
    config = sweep.parser().parse_args(arguments)
    runs = plan(
        config.base_config,
        config.grid,
        config.seeds,
        config.args,
        Path(config.root) / config.name,
        config.epochs,
        config.steps,
    )
    for run in runs:
        (run.directory / "checkpoints").mkdir(parents=True)
        (run.directory / MADE_BY_THE_SWEEP).touch()
        with zipfile.ZipFile(run.directory / "checkpoints" / "last.ckpt", "w") as archive:
            archive.writestr("archive/data.pkl", b"weights")
        (run.directory / "result.json").write_text(json.dumps(result_of(run, **fields)))
    return runs


def rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as file:
        return {row["run"]: row for row in csv.DictReader(file)}


@pytest.fixture
def in_work(tmp_path, monkeypatch) -> Path:
    """A working folder ``work`` with files around and in it that no sweep may touch."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("name", ["../../mydata", "", "..", ".", "a/b", "/tmp/elsewhere", "-x"])
def test_a_sweep_name_that_is_not_one_folder_name_is_refused_and_nothing_is_written(name, tmp_path, in_work):
    mydata = in_work / "mydata"  # where --name ../../mydata leads from lightning_logs/sweeps
    mydata.mkdir()
    (mydata / "results.csv").write_text("a user's own results\n")
    sentinels = Sentinels(tmp_path, own=())
    line = refusal([f"--name={name}", f"--base_config={DEFAULT_CONFIG}", *ONE_CELL])
    assert line.startswith(f"binclf-sweep: error: --name {name!r} ")
    assert line.endswith(": give one folder name")
    assert sentinels.changed() == []
    assert (mydata / "results.csv").read_text() == "a user's own results\n"
    assert not (in_work / "lightning_logs").exists()


def test_a_sweep_name_that_is_a_link_out_of_the_sweeps_folder_is_refused(tmp_path, in_work):
    (tmp_path / "outside").mkdir()
    sweeps = in_work / "lightning_logs" / "sweeps"
    sweeps.mkdir(parents=True)
    (sweeps / "linked").symlink_to(tmp_path / "outside")
    line = refusal(["--name=linked", f"--base_config={DEFAULT_CONFIG}", *ONE_CELL])
    assert line == "binclf-sweep: error: --name 'linked' leads out of lightning_logs/sweeps"
    assert list((tmp_path / "outside").iterdir()) == []


def test_a_grid_path_with_dot_dot_names_its_run_inside_the_sweep_and_a_rerun_removes_nothing_else(
    tmp_path, in_work, monkeypatch
):
    """The runs are real ``binclf fit`` runs, in this process; each fails at once, on a table that is not
    there. Where the run folder is, and what a rerun removes, is what matters."""
    monkeypatch.setattr(sweep, "check_arguments", lambda run: None)  # a process of its own: tested elsewhere
    monkeypatch.setattr(
        sweep, "_run_here", lambda work, workers, progress: [progress.record(run_task(task)) for task in work]
    )
    value = "../" * 6 + "outside/deep/data.csv"
    arguments = ["--name=paths", f"--base_config={CONFIGS / 'tabular_example.yaml'}", "--epochs=1"]
    arguments += [f'--grid={{"data.path": ["{value}"]}}', "--workers=1"]
    sentinels = Sentinels(tmp_path, own=("work/lightning_logs/sweeps/paths",))
    for _ in range(2):  # the second sweep redoes the failed run: it removes that run's folder first
        with pytest.raises(SystemExit, match="1 runs failed"):
            main(arguments)
    assert sentinels.changed() == []
    sweep_dir = in_work / "lightning_logs" / "sweeps" / "paths"
    [run_dir] = (sweep_dir / "runs").iterdir()
    assert run_dir.name == "path=data.csv,seed=0"
    assert "data.csv" in rows(sweep_dir / "results.csv")["path=data.csv,seed=0"]["error"]


def test_a_folder_in_a_runs_place_that_the_sweep_did_not_make_is_left_alone(in_work, monkeypatch):
    monkeypatch.setattr(sweep, "check_arguments", lambda run: None)
    monkeypatch.setattr(
        sweep, "_run_here", lambda work, workers, progress: [progress.record(run_task(task)) for task in work]
    )
    mine = in_work / "lightning_logs" / "sweeps" / "sweep" / "runs" / "scale=0.5,seed=0"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="1 runs failed"):
        main([f"--base_config={DEFAULT_CONFIG}", *ONE_CELL])
    assert [path.name for path in mine.iterdir()] == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "mine"
    error = rows(mine.parents[1] / "results.csv")["scale=0.5,seed=0"]["error"]
    assert error.endswith("is in the way, and this sweep did not make it: move it elsewhere")


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ('--grid={"trainer.max_epochs": [1, 2]}', "trainer.max_epochs"),
        ('--grid={"seed_everything": [1, 2]}', "seed_everything"),
        ('--grid={"data.seed": [1, 2]}', "data.seed"),
        ('--grid={"trainer.logger.init_args.save_dir": ["x"]}', "trainer.logger.init_args.save_dir"),
        ("--args=[--trainer.max_steps=5]", "trainer.max_steps"),
        ("--args=[--seed_everything=3]", "seed_everything"),
    ],
)
def test_a_setting_the_sweep_gives_every_run_is_refused_in_the_grid_and_args(setting, key, in_work):
    arguments = [f"--base_config={DEFAULT_CONFIG}", "--epochs=1", setting]
    if setting.startswith("--args"):
        arguments.append('--grid={"data.scale": [0.5]}')
    line = refusal(arguments)
    assert line.startswith(f"binclf-sweep: error: {key} is set by the sweep for every run")
    assert not (in_work / "lightning_logs").exists()


@pytest.mark.parametrize(
    ("arguments", "runs"),
    [
        (
            [
                "--grid="
                + json.dumps({"data.scale": [i / 1000 for i in range(1, 1001)], "data.dim": [*range(1000)]})
            ],
            "1,000,000",
        ),
        (['--grid={"data.scale": [0.5]}', f"--seeds={list(range(50_000))}"], "50,000"),
    ],
    ids=["a 1000 x 1000 grid", "50,000 seeds"],
)
def test_a_grid_larger_than_max_runs_is_refused_before_a_run_is_built(arguments, runs, in_work):
    """Measured by the memory the sweep takes, not by a clock: the runs' arguments for a million runs would
    take gigabytes; the parsed settings alone take a few megabytes."""
    tracemalloc.start()
    try:
        line = refusal([f"--base_config={DEFAULT_CONFIG}", "--epochs=1", *arguments])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert line.startswith(f"binclf-sweep: error: the grid and seeds make {runs} runs, more than max_runs=")
    assert peak < 100e6


def test_a_grid_of_exactly_max_runs_is_planned():
    grid = {"data.scale": [0.1, 0.2, 0.3]}
    runs = plan(str(DEFAULT_CONFIG), grid, [0, 1], [], Path("sweep"), 1, None, max_runs=6)
    assert len(runs) == 6
    with pytest.raises(ValueError, match="the grid and seeds make 6 runs, more than max_runs=5"):
        plan(str(DEFAULT_CONFIG), grid, [0, 1], [], Path("sweep"), 1, None, max_runs=5)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64])
def test_a_seed_numpy_cannot_take_is_refused_before_any_run(seed, in_work):
    line = refusal([f"--base_config={DEFAULT_CONFIG}", *ONE_CELL, f"--seeds=[0, {seed}]"])
    assert line == (
        f"binclf-sweep: error: seeds: {seed} is not a seed: seeds are whole numbers from 0 to 2**32 - 1"
    )


def test_a_fifo_as_the_base_config_is_refused_not_waited_on(in_work):
    os.mkfifo("base.yaml")
    line = refusal(["--base_config=base.yaml", *ONE_CELL])
    assert line == "binclf-sweep: error: --base_config: base.yaml is a FIFO, not a file"


def test_a_fifo_as_the_sweeps_lock_is_refused_not_waited_on(in_work):
    arguments = [f"--base_config={DEFAULT_CONFIG}", *ONE_CELL]
    finish_every_run(arguments, **{"test/acc": 0.99})
    os.mkfifo("lightning_logs/sweeps/sweep/.lock")
    line = refusal(arguments)
    assert line == (
        "binclf-sweep: error: lightning_logs/sweeps/sweep/.lock is not a regular file: it cannot be the "
        "sweep's lock"
    )


def test_a_second_sweep_is_refused_while_the_first_holds_the_lock(in_work):
    """The first sweep's lock is taken by the sweep's own code, so that a lock taken shared would let the
    second one in."""
    arguments = [f"--base_config={DEFAULT_CONFIG}", *ONE_CELL]
    finish_every_run(arguments, **{"test/acc": 0.99})
    sweep_dir = Path("lightning_logs/sweeps/sweep")
    with sweep_lock(sweep_dir):
        line = refusal(arguments)
    assert (
        line
        == f"binclf-sweep: error: another binclf-sweep is running in {sweep_dir} (it holds {sweep_dir}/.lock)"
    )
    assert not (sweep_dir / "results.csv").exists()
    main(arguments)  # once the first has ended, the same command goes on
    assert rows(sweep_dir / "results.csv")["scale=0.5,seed=0"]["status"] == "ok"


def test_results_csv_replaced_by_a_folder_is_one_line_naming_it(in_work):
    arguments = [f"--base_config={DEFAULT_CONFIG}", *ONE_CELL]
    finish_every_run(arguments, **{"test/acc": 0.99})
    Path("lightning_logs/sweeps/sweep/results.csv").mkdir()
    line = refusal(arguments)
    assert "lightning_logs/sweeps/sweep/results.csv" in line
    assert "Is a directory" in line


EDITS = {
    "a NaN metric": lambda result: result | {"test/acc": float("nan")},
    "an infinite wall time": lambda result: result | {"wall_seconds": float("inf")},
    "a metric that is text": lambda result: result | {"test/acc": "99 %"},
    "another run's name": lambda result: result | {"run": "scale=0.9,seed=0"},
    "another seed": lambda result: result | {"seed": 7},
    "other settings": lambda result: result | {"data.scale": 0.9},
    "no status": lambda result: {k: v for k, v in result.items() if k != "status"},
    "a histogram whose counts do not fit its edges": lambda result: (
        result | {"histogram": {"edges": [0, 1], "a": [1, 2], "b": [3]}}
    ),
}


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_result_json_is_not_published_and_its_run_is_redone(edit, in_work, monkeypatch, capsys):
    redone = []
    monkeypatch.setattr(sweep, "check_arguments", lambda run: None)
    monkeypatch.setattr(sweep, "_run_here", lambda work, workers, progress: redone.extend(work))
    arguments = [f"--base_config={DEFAULT_CONFIG}", '--grid={"data.scale": [0.5, 0.7]}', "--epochs=1"]
    edited, kept = finish_every_run(arguments, **{"test/acc": 0.99, "wall_seconds": 1.5})
    result = json.loads((edited.directory / "result.json").read_text())
    # json.dumps writes NaN and Infinity, as Python's json reads them: a hand edit could too.
    (edited.directory / "result.json").write_text(json.dumps(EDITS[edit](result)))
    with pytest.raises(SystemExit, match="1 runs failed"):
        main(arguments)
    assert "2 runs, 1 already finished, 1 to run" in capsys.readouterr().out
    assert [[run.name for run in task] for task in redone] == [[edited.name]]
    table = rows(Path("lightning_logs/sweeps/sweep/results.csv"))
    assert table[edited.name]["status"] == "missing"
    assert table[edited.name]["test/acc"] == ""
    assert table[kept.name]["status"] == "ok"
    assert table[kept.name]["test/acc"] == "0.99"


def test_results_csv_cells_cannot_run_as_formulas(in_work):
    formula = '=HYPERLINK("http://example.com","see")'
    arguments = [f"--base_config={DEFAULT_CONFIG}", "--epochs=1"]
    arguments.append("--grid=" + json.dumps({"model.optimizer": [formula, "-1+2", "SGD", "-0.5"]}))
    finish_every_run(arguments, **{"test/acc": 0.99})
    main(arguments)
    with Path("lightning_logs/sweeps/sweep/results.csv").open() as file:
        optimizers = [row["model.optimizer"] for row in csv.DictReader(file)]
    assert optimizers == ["'" + formula, "'-1+2", "SGD", "-0.5"]  # a negative number stays a number


# The sweep checks its runs' arguments in a worker, whose parser imports the module a class path names: this
# module, imported there, writes the worker's pid into the pipe that HOLD_THE_CHECK names, then waits for a
# signal.
HELD_IMPORT = """
import os, signal
with open(os.environ["HOLD_THE_CHECK"], "w") as pipe:
    pipe.write(str(os.getpid()))
signal.pause()
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_sigterm_while_the_sweep_checks_its_arguments_leaves_no_process(tmp_path):
    """The worker that checks the arguments is held at a known point (importing the network's module),
    having said its pid; then the sweep gets SIGTERM. Once the sweep has exited, the worker must be gone
    too, not left running without it."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "held_import.py").write_text(HELD_IMPORT)
    pipe = tmp_path / "pid"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDWR)  # open for writing too, so neither end waits for the other
    env = os.environ | {"PYTHONPATH": str(tmp_path / "site"), "HOLD_THE_CHECK": str(pipe)}
    arguments = [f"--base_config={DEFAULT_CONFIG}", *ONE_CELL, f"--root={tmp_path / 'sweeps'}"]
    arguments.append("--args=[--model.network=held_import.Network]")
    sweep_process = subprocess.Popen(
        [sys.executable, "-m", "binclf.study.sweep", *arguments],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        readable, _, _ = select.select([reader], [], [], 300)  # a hang's limit, not a race
        assert readable, "the sweep never started its check"
        child = int(os.read(reader, 32))
        assert alive(child)
        sweep_process.send_signal(signal.SIGTERM)
        _, stderr = sweep_process.communicate(timeout=300)
    finally:
        os.close(reader)
        sweep_process.kill()
    assert sweep_process.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert not alive(child)
