"""binclf-sweep end to end on a tiny grid: results, figures, a forced failure, and resuming."""

import contextlib
import csv
import fcntl
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from helpers import DEFAULT_CONFIG, SMALL, heavy_imports, result_of
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from binclf.cli import run_command
from binclf.command import Terminated
from binclf.data.gaussians import normal_cdf
from binclf.study import report as report_module
from binclf.study import sweep
from binclf.study.execute import SWEEP_PROCESS, run_task
from binclf.study.plan import OWNED, finished, plan
from binclf.study.report import efficiency_figure, report
from binclf.study.sweep import StopOnce, main

PNG = b"\x89PNG\r\n\x1a\n"


def read_rows(path):
    with path.open() as file:
        return {row["run"]: row for row in csv.DictReader(file)}


@pytest.mark.slow
def test_tiny_sweep_records_failures_and_resumes_only_what_is_missing(
    tmp_path, monkeypatch, capsys, default_config
):
    monkeypatch.chdir(tmp_path)
    args = [
        f"--base_config={default_config}",
        '--grid={"data.scale": [0.3, 1.0], "data.num_samples": [100, 200]}',
        "--seeds=[0]",
        "--epochs=3",
        "--args=[--data.num_val_samples=100, --data.num_test_samples=500, --model.optimizer.lr=0.3]",
        "--name=tiny",
        "--workers=2",
    ]
    sweep = tmp_path / "lightning_logs" / "sweeps" / "tiny"
    # Force one run to fail: a file stands where its run directory has to go.
    obstacle = sweep / "runs" / "scale=1,num_samples=200,seed=0"
    obstacle.parent.mkdir(parents=True)
    obstacle.write_text("in the way")

    with pytest.raises(SystemExit, match="1 runs failed"):
        main(args)
    rows = read_rows(sweep / "results.csv")
    assert set(rows) == {
        "scale=0.3,num_samples=100,seed=0",
        "scale=0.3,num_samples=200,seed=0",
        "scale=1,num_samples=100,seed=0",
        "scale=1,num_samples=200,seed=0",
    }
    failed = rows.pop("scale=1,num_samples=200,seed=0")
    assert failed["status"] == "failed"
    assert failed["error"].endswith("is in the way, and this sweep did not make it: move it elsewhere")
    for name, row in rows.items():
        assert row["status"] == "ok", row["error"]
        scale = float(row["data.scale"])
        assert name.startswith(f"scale={scale:g},num_samples={row['data.num_samples']},")
        assert 0.0 <= float(row["test/acc"]) <= 1.0
        assert float(row["wall_seconds"]) > 0
        # The Bayes limit beside every point: analytic Φ(|μb − μa| / 2σ), and on the run's own test points.
        analytic = normal_cdf(1.0 / (2 * scale))
        assert float(row["test/bayes_acc_analytic"]) == pytest.approx(analytic, abs=1e-6)
        assert float(row["test/bayes_acc"]) == pytest.approx(analytic, abs=0.05)
    for figure in ("accuracy.png", "data_grid.png"):
        assert (sweep / figure).read_bytes().startswith(PNG)
    assert "| Bayes rule |" in (sweep / "results.md").read_text()
    # Each run's own TensorBoard logs sit under one folder, for `tensorboard --logdir <sweep>`.
    assert list((sweep / "runs" / "scale=0.3,num_samples=100,seed=0").glob("events.out.tfevents.*"))

    # Resuming redoes only the failed run.
    obstacle.unlink()
    finished = {name: (sweep / "runs" / name / "result.json").stat().st_mtime_ns for name in rows}
    capsys.readouterr()
    main(args)
    assert "4 runs, 3 already finished, 1 to run" in capsys.readouterr().out
    assert all((sweep / "runs" / n / "result.json").stat().st_mtime_ns == t for n, t in finished.items())
    assert all(row["status"] == "ok" for row in read_rows(sweep / "results.csv").values())

    # And once everything is done, nothing new runs.
    main(args)
    assert "4 runs, 4 already finished, 0 to run" in capsys.readouterr().out
    assert json.loads((obstacle / "result.json").read_text())["status"] == "ok"


def test_empty_grid_and_double_budget_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="the grid is empty"):
        main(["--epochs=1"])
    with pytest.raises(SystemExit, match="exactly one of epochs or steps"):
        main(['--grid={"data.scale": [0.5]}', "--epochs=1", "--steps=10"])


BAD_SWEEPS = {
    "an axis with no values": (['--grid={"data.scale": []}', "--epochs=1"], "grid.data.scale has no values"),
    "no seeds": (['--grid={"data.scale": [0.5]}', "--epochs=1", "--seeds=[]"], "seeds is empty"),
    "a seed twice": (['--grid={"data.scale": [0.5]}', "--epochs=1", "--seeds=[0, 0]"], "a seed twice"),
    "values that name the same run": (
        ['--grid={"data.scale": [1, 1.0]}', "--epochs=1"],
        "grid.data.scale lists 1 and 1.0, which name the same run (1)",
    ),
    "a budget that never ends": (['--grid={"data.scale": [0.5]}', "--steps=-1"], "steps must be at least 1"),
    "no epochs": (['--grid={"data.scale": [0.5]}', "--epochs=0"], "epochs must be at least 1"),
    "negative workers": (['--grid={"data.scale": [0.5]}', "--epochs=1", "--workers=-1"], "workers must be 0"),
    "no time between progress lines": (
        ['--grid={"data.scale": [0.5]}', "--epochs=1", "--progress_every=0"],
        "progress_every must be a positive number of seconds, got 0.0",
    ),
    "a grid key no fit accepts": (
        [f"--base_config={DEFAULT_CONFIG}", '--grid={"data.sclae": [0.5]}', "--epochs=1"],
        "binclf fit refuses the runs' arguments: --data.sclae: TwoGaussianDataModule takes no argument "
        "'sclae'; did you mean --data.scale?",
    ),
    "an argument no fit accepts": (
        [
            f"--base_config={DEFAULT_CONFIG}",
            '--grid={"data.scale": [0.5]}',
            "--epochs=1",
            "--args=[--model.momentum=0.9]",
        ],
        "binclf fit refuses the runs' arguments: unrecognized arguments: --model.momentum=0.9",
    ),
    "a base config that is not there": (
        ['--grid={"data.scale": [0.5]}', "--epochs=1", "--base_config=absent.yaml"],
        "--base_config: absent.yaml does not exist",
    ),
    "more runs than max_runs": (
        ['--grid={"data.scale": [0.1, 0.2, 0.3]}', "--seeds=[0, 1]", "--epochs=1", "--max_runs=5"],
        "the grid and seeds make 6 runs, more than max_runs=5",
    ),
    "plot axis not in the grid": (
        ['--grid={"data.scale": [0.5]}', "--epochs=1", "--plot.x=data.dim"],
        "plot.x is 'data.dim', which is not a grid key",
    ),
}


# These three start `python -m binclf` to parse the runs' arguments: seconds each.
PARSED_BY_BINCLF = {
    "a grid key no fit accepts",
    "an argument no fit accepts",
    "a base config that is not there",
}


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, marks=pytest.mark.slow if case in PARSED_BY_BINCLF else ()) for case in BAD_SWEEPS],
)
def test_bad_sweep_settings_get_one_line_before_anything_runs(case, tmp_path, monkeypatch):
    arguments, named = BAD_SWEEPS[case]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(arguments)
    assert str(exit_.value.code).startswith("binclf-sweep: error: ")
    assert named in str(exit_.value.code)
    assert not (tmp_path / "lightning_logs").exists()


def test_two_cells_that_would_share_a_run_folder_are_refused(tmp_path):
    """Names join each key's last part and value with commas, so values that hold commas can make two
    cells read alike; they would overwrite each other's runs."""
    grid = {"data.lr": ["0.1,lr=0.2", "0.1"], "model.lr": ["0.3", "0.2,lr=0.3"]}
    folder = re.escape("lr=0.1,lr=0.2,lr=0.3,seed=0")
    with pytest.raises(ValueError, match=f"two grid cells would share the run folder {folder}"):
        plan("default.yaml", grid, [0], [], tmp_path, 1, None)


def test_values_that_print_alike_get_run_folders_of_their_own(tmp_path):
    runs = plan("default.yaml", {"data.scale": [0.2, 0.2000001]}, [0], [], tmp_path, 1, None)
    assert [run.name for run in runs] == ["scale=0.2,seed=0", "scale=0.2000001,seed=0"]


@pytest.mark.slow
def test_named_settings_a_failing_run_and_damaged_results(tmp_path, monkeypatch, capsys, default_config):
    monkeypatch.chdir(tmp_path)
    args = [
        f"--base_config={default_config}",
        '--grid={"model.optimizer": ["SGD", "Adam", "NoSuchOptimizer"]}',
        "--epochs=1",
        "--args=[--data.num_samples=100, --data.num_val_samples=100, --data.num_test_samples=200]",
        "--name=named",
        "--workers=2",
    ]
    sweep = tmp_path / "lightning_logs" / "sweeps" / "named"
    with pytest.raises(SystemExit, match="1 runs failed"):
        main(args)
    rows = read_rows(sweep / "results.csv")
    assert [rows[f"optimizer={name},seed=0"]["status"] for name in ("SGD", "Adam")] == ["ok", "ok"]
    failed = rows["optimizer=NoSuchOptimizer,seed=0"]
    assert failed["status"] == "failed"
    assert "NoSuchOptimizer" in failed["error"]  # the parser's own message, not just its exit status
    assert (sweep / "accuracy.png").read_bytes().startswith(PNG)  # a named axis is drawn, not a crash
    table = (sweep / "results.md").read_text().splitlines()
    assert table[:3] == ["Test accuracy (%):", "", "| optimizer | Adam | NoSuchOptimizer | SGD |"]
    assert table[4].startswith("| network | ")
    assert table[4].split(" | ")[2] == "—"  # the failed run's cell

    # A result file that is damaged, or holds no result, means the run is redone, not that the sweep breaks.
    (sweep / "runs" / "optimizer=SGD,seed=0" / "result.json").write_text("[1, 2]")
    (sweep / "runs" / "optimizer=Adam,seed=0" / "result.json").write_text('{"status": "ok", "ar')
    capsys.readouterr()
    with pytest.raises(SystemExit, match="1 runs failed"):
        main(args)
    assert "3 runs, 0 already finished, 3 to run" in capsys.readouterr().out
    rows = read_rows(sweep / "results.csv")
    assert [rows[f"optimizer={name},seed=0"]["status"] for name in ("SGD", "Adam")] == ["ok", "ok"]


@pytest.mark.slow
@pytest.mark.parametrize(("signal_name", "status"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_stopped_sweep_ends_its_workers_and_keeps_what_finished(
    tmp_path, default_config, signal_name, status
):
    pids = tmp_path / "worker_pids"
    stop = {
        "class_path": "faults.SignalAtEpochStart",
        "init_args": {
            "epoch": 1,
            "signal_name": signal_name,
            "to_parent": True,
            "pid_file": str(pids),
            "pids": 2,
        },
    }
    command = [
        str(Path(sys.executable).parent / "binclf-sweep"),
        f"--base_config={default_config}",
        '--grid={"data.scale": [0.5, 1.0]}',
        "--epochs=1000000",  # never reached: the runs end only when the sweep is stopped
        "--args=[--data.num_samples=100, --data.num_val_samples=100, "
        f"'--trainer.callbacks+={json.dumps(stop)}']",
        "--name=stopped",
        "--workers=2",
    ]
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False, env=environment
    )
    assert result.returncode == status, result.stderr[-3000:]
    name = "SIGTERM" if signal_name == "SIGTERM" else "Ctrl-C"
    assert f"binclf-sweep: stopped by {name}" in result.stdout
    assert "Traceback" not in result.stderr
    workers = [int(pid) for pid in pids.read_text().split()]
    assert len(set(workers)) == 2
    for pid in workers:  # the sweep waited for its workers: none is left running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    rows = read_rows(tmp_path / "lightning_logs" / "sweeps" / "stopped" / "results.csv")
    assert {row["status"] for row in rows.values()} == {"missing"}  # stopped runs are redone next time


def test_a_finished_run_counts_as_done_only_for_the_arguments_it_ran_with(tmp_path):
    [run] = plan("default.yaml", {"data.scale": [0.5]}, [0], [], tmp_path, 3, None)
    [changed] = plan(
        "default.yaml", {"data.scale": [0.5]}, [0], ["--model.optimizer.lr=0.1"], tmp_path, 3, None
    )
    assert run.directory == changed.directory
    (run.directory / "checkpoints").mkdir(parents=True)
    with zipfile.ZipFile(run.directory / "checkpoints" / "last.ckpt", "w") as archive:
        archive.writestr("archive/data.pkl", b"weights" * 100)
    (run.directory / "result.json").write_text(json.dumps(result_of(run)))
    assert finished(run)
    assert not finished(changed)


@pytest.mark.parametrize("damage", ["removed", "cut short", "a byte changed"])
def test_a_run_whose_checkpoint_is_missing_or_damaged_is_not_finished(damage, tmp_path):
    [run] = plan("default.yaml", {"data.scale": [0.5]}, [0], [], tmp_path, 3, None)
    checkpoint = run.directory / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    with zipfile.ZipFile(checkpoint, "w") as archive:
        archive.writestr("archive/data.pkl", b"weights" * 100)
    (run.directory / "result.json").write_text(json.dumps(result_of(run)))
    assert finished(run)
    data = checkpoint.read_bytes()
    if damage == "removed":
        checkpoint.unlink()
    elif damage == "cut short":
        checkpoint.write_bytes(data[: len(data) // 2])
    else:
        start = data.index(b"weights")
        checkpoint.write_bytes(data[:start] + b"W" + data[start + 1 :])
    assert not finished(run)


@pytest.mark.slow
def test_a_second_sweep_in_the_same_folder_is_refused_while_the_first_holds_it(
    tmp_path, monkeypatch, default_config
):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "lightning_logs" / "sweeps" / "locked"
    sweep.mkdir(parents=True)
    args = [f"--base_config={default_config}", '--grid={"data.scale": [0.5]}', "--epochs=1", "--name=locked"]
    with (sweep / ".lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the first sweep's process holds it
        with pytest.raises(SystemExit) as exit_:
            main(args)
    assert str(exit_.value.code) == (
        "binclf-sweep: error: another binclf-sweep is running in lightning_logs/sweeps/locked "
        "(it holds lightning_logs/sweeps/locked/.lock)"
    )
    assert not (sweep / "runs").exists()


def test_a_sweep_config_whose_aliases_explode_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    levels = "".join(f"l{i + 1}: &l{i + 1} [{', '.join([f'*l{i}'] * 10)}]\n" for i in range(6))
    (tmp_path / "sweep.yaml").write_text(f"l0: &l0 [x]\n{levels}")
    with pytest.raises(SystemExit) as exit_:
        main(["-c", "sweep.yaml"])
    assert str(exit_.value.code) == (
        "binclf-sweep: error: sweep.yaml, line 6: expands to more than 100,000 values "
        "(YAML aliases repeat what they point to)"
    )


def test_the_report_tables_the_llr_error_and_efficiency_and_draws_what_has_a_floor(tmp_path):
    """Rows as a study writes them: the floor applied at scale 0.5 but not at 0.2, and one run failed."""

    def row(scale, seed, efficiency=None, status="ok"):
        values = {"status": status, "seed": seed, "data.scale": scale, "data.num_samples": 1000}
        if status == "ok":
            values |= {"test/acc": 0.9, "test/bayes_acc": 0.91, "test/llr_rmse": 0.1 + seed / 10}
        if efficiency is not None:
            values["test/llr_efficiency"] = efficiency
        return values

    rows = [row(0.2, 0), row(0.2, 1), row(0.5, 0, 1.0), row(0.5, 1, 3.0), row(1.0, 0, status="failed")]
    report(rows, tmp_path, "data.scale", "data.num_samples")
    sections = (tmp_path / "results.md").read_text().split("\n\n")
    assert sections[1].splitlines() == [
        "| num_samples \\ scale | 0.2 | 0.5 | 1 |",
        "|---|---|---|---|",
        "| 1,000 | 90.00 ± 0.00 | 90.00 ± 0.00 | — |",
        "| Bayes rule | 91.00 ± 0.00 | 91.00 ± 0.00 | — |",
    ]
    assert sections[3].splitlines()[2] == "| 1,000 | 0.150 ± 0.050 | 0.150 ± 0.050 | — |"
    assert sections[5].splitlines()[2] == "| 1,000 | — | 2.00 ± 1.00 | — |"
    assert (tmp_path / "llr_efficiency.png").read_bytes().startswith(PNG)
    # TensorBoard shows the same figures, each as its PNG file, in the sweep's summary run.
    summary = EventAccumulator(str(tmp_path / "summary"), size_guidance={"images": 0})
    summary.Reload()
    assert sorted(summary.Tags()["images"]) == ["sweep/accuracy", "sweep/llr_efficiency"]
    for name in ("accuracy", "llr_efficiency"):
        [image] = summary.Images(f"sweep/{name}")
        assert image.encoded_image_string == (tmp_path / f"{name}.png").read_bytes()
    # The finished cell without a floor is named; the failed one is not a missing floor.
    label = efficiency_figure(rows, "data.scale", "data.num_samples", seeds=2).axes[0].get_xlabel()
    assert label.endswith("no floor, so no point: num_samples=1,000 at scale=0.2")


@pytest.mark.slow
def test_workers_end_themselves_when_the_sweep_is_killed_outright(tmp_path, default_config):
    """SIGKILL leaves a sweep no chance to end its workers: they notice that it has gone, and end."""
    hold = {"class_path": "faults.HoldAtTrainStart", "init_args": {"folder": str(tmp_path)}}
    command = [
        str(Path(sys.executable).parent / "binclf-sweep"),
        f"--base_config={default_config}",
        '--grid={"data.scale": [0.5, 1.0]}',
        "--epochs=1",
        f"--args=[--data.num_samples=100, '--trainer.callbacks+={json.dumps(hold)}']",
        "--name=killed",
        "--workers=2",
    ]
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    sweep = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment
    )
    workers: list[int] = []
    try:
        # Both runs held at the start of training, which never goes on: the files they write say so.
        while len(started := list(tmp_path.glob("started@*"))) < 2:
            assert sweep.poll() is None, "the sweep ended before both workers started a run"
            time.sleep(0.05)  # waits on files the workers write, not on a clock
        workers = [int(path.name.split("@")[2]) for path in started]
        sweep.kill()
        sweep.wait()
        for pid in workers:
            assert ended(pid), f"worker {pid} is still running without its sweep"
    finally:
        sweep.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def ended(pid: int) -> bool:
    """Block until process ``pid`` exits, which the kernel reports through a pidfd; ``False`` if it has not
    after 300 s, the other sweep tests' process timeout, which only ends a hang."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:  # already gone
        return True
    try:
        readable, _, _ = select.select([descriptor], [], [], 300)
    finally:
        os.close(descriptor)
    return bool(readable)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
@pytest.mark.parametrize("moment", ["results.csv is written", "the report is drawn"])
def test_a_signal_at_the_very_end_still_stops_the_sweep_with_its_status(
    stop, moment, tmp_path, monkeypatch, capsys
):
    """Every run is finished already, so the sweep goes straight to its last steps, and the signal comes
    from inside one of them: the sweep still ends with 130 or 143, and results.csv is whole."""
    monkeypatch.chdir(tmp_path)
    args = ['--grid={"data.scale": [0.5, 1.0]}', "--epochs=1", "--name=ending", "--workers=1"]
    for run in plan(
        "configs/default.yaml",
        {"data.scale": [0.5, 1.0]},
        [0],
        [],
        Path("lightning_logs/sweeps/ending"),
        1,
        None,
    ):
        (run.directory / "checkpoints").mkdir(parents=True)
        with zipfile.ZipFile(run.directory / "checkpoints" / "last.ckpt", "w") as archive:
            archive.writestr("archive/data.pkl", b"weights")
        (run.directory / "result.json").write_text(json.dumps(result_of(run)))
    signalled = []

    def signal_once() -> None:
        if not signalled:
            signalled.append(stop)
            os.kill(os.getpid(), stop)

    if moment == "results.csv is written":
        real = sweep.write_results

        def write_results(*a, **k):
            signal_once()
            return real(*a, **k)

        monkeypatch.setattr(sweep, "write_results", write_results)
    else:
        monkeypatch.setattr(report_module, "report", lambda *a, **k: signal_once())
    with pytest.raises(SystemExit) as exit_:
        sweep.main(args)
    assert signalled == [stop]
    assert exit_.value.code == (130 if stop == signal.SIGINT else 143)
    name = "Ctrl-C" if stop == signal.SIGINT else "SIGTERM"
    assert f"binclf-sweep: stopped by {name}" in capsys.readouterr().out
    assert {
        row["status"]
        for row in read_rows(tmp_path / "lightning_logs" / "sweeps" / "ending" / "results.csv").values()
    } == {"ok"}


def test_a_calibrated_studys_report_names_its_floor_and_keeps_the_training_only_figure(tmp_path):
    rows = [
        {
            "status": "ok",
            "seed": seed,
            "data.scale": 0.5,
            "data.num_samples": 1000,
            "test/acc": 0.9,
            "test/bayes_acc": 0.91,
            "test/llr_rmse": 0.2,
            "test/llr_efficiency": 1.5 + seed,
            "test/llr_efficiency_train_floor": 0.5 + seed,
        }
        for seed in (0, 1)
    ]
    report(rows, tmp_path, "data.scale", "data.num_samples")
    text = (tmp_path / "results.md").read_text()
    assert "saw the cell's data, the training and validation points" in text
    sections = text.split("\n\n")
    assert sections[5].splitlines()[2] == "| 1,000 | 2.00 ± 0.50 |"
    assert sections[6].startswith("The same RMSE over the training-only floor")
    assert sections[7].splitlines()[2] == "| 1,000 | 1.00 ± 0.50 |"


def test_a_second_signal_cannot_cut_short_the_stopping_of_a_sweep():
    """binclf-sweep stops on the first SIGINT or SIGTERM and ends its workers; a second signal meanwhile
    (both workers of a stopped test sweep sent one) used to escape the clean-up, and the sweep then waited
    for workers that would never end."""
    previous = StopOnce().install()
    try:
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler before the next bytecode
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    with pytest.raises(KeyboardInterrupt):
        StopOnce()(signal.SIGINT, None)


def test_a_cell_with_one_seed_shows_its_value_without_a_spread(tmp_path):
    rows = [
        {
            "status": "ok",
            "seed": 0,
            "data.scale": 0.5,
            "data.num_samples": 1000,
            "test/acc": 0.9,
            "test/bayes_acc": 0.91,
        },
        {
            "status": "ok",
            "seed": 0,
            "data.scale": 1.0,
            "data.num_samples": 1000,
            "test/acc": 0.8,
            "test/bayes_acc": 0.82,
        },
        {
            "status": "ok",
            "seed": 1,
            "data.scale": 1.0,
            "data.num_samples": 1000,
            "test/acc": 0.7,
            "test/bayes_acc": 0.82,
        },
    ]
    report(rows, tmp_path, "data.scale", "data.num_samples")
    table = (tmp_path / "results.md").read_text().split("\n\n")[1].splitlines()
    assert table[2] == "| 1,000 | 90.00 | 75.00 ± 5.00 |"


@pytest.mark.slow
def test_a_sweep_into_a_file_says_a_line_per_group_and_per_run(tmp_path, default_config):
    """Into a file, one line per stack or solo group and one per run. A 2 learning rates × 2 seeds grid on 2
    workers (this 2-core machine's default; with more, each run would have a worker of its own) and an
    epoch budget (every run's epochs of one length) trains as two stacks: a run's time is its stack's, and
    the line says so."""
    small = "--data.num_val_samples=200, --data.num_test_samples=1000, --data.batch_size=64"

    def sweep_into_a_pipe(name: str, grid: str, *extra: str) -> str:
        command = [str(Path(sys.executable).parent / "binclf-sweep"), f"--base_config={default_config}"]
        command += [f"--grid={grid}", f"--root={tmp_path}", f"--name={name}", *extra]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "\r" not in result.stdout  # no progress bar redrawn into the file
        return result.stdout

    rates = '{"model.optimizer.lr": [0.1, 0.3]}'
    stacked = sweep_into_a_pipe(
        "stacked",
        rates,
        "--seeds=[0, 1]",
        "--epochs=3",
        "--workers=2",
        f"--args=[{small}, --data.num_samples=200]",
    )
    lines = stacked.splitlines()
    stacks = [line for line in lines if line.startswith(("stack of", "solo"))]
    assert len(stacks) == 2, stacked
    assert all(line.startswith("stack of 2 runs") for line in stacks), stacked
    assert all(
        "they differ only in data settings, seeds and optimizer settings, so they train together" in line
        for line in stacks
    )
    run_line = r"run lr=0\.[13],seed=[01]: ok, acc \d+\.\d\d %, \d+\.\d s for its stack of 2"
    finished = [line for line in lines if line.startswith("run ")]
    assert len(finished) == 4, stacked
    assert all(re.fullmatch(run_line, line) for line in finished), finished
    assert (tmp_path / "stacked" / "runs" / "lr=0.1,seed=0" / "stack.log").is_file()

    for run in ("lr=0.1,seed=0", "lr=0.3,seed=1"):  # each run's own log holds its test summary
        log = (tmp_path / "stacked" / "runs" / run / "output.log").read_text()
        assert "Test summary" in log
        assert "Best checkpoint:" in log


@pytest.mark.slow
def test_runs_that_cannot_stack_train_solo_and_say_why(tmp_path, monkeypatch):
    """Two runs whose scheduler follows their own validation loss: given as a stack, they train solo one
    after the other, each in its own folder, and the line says why."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf-sweep"])
    scheduler = "--model.lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau"
    small = [arg for arg in SMALL if arg.split("=")[0].removeprefix("--") not in OWNED]
    runs = plan(str(DEFAULT_CONFIG), {"data.scale": [0.3, 1.0]}, [0], [*small, scheduler], tmp_path, None, 20)
    results = run_task(runs)
    assert sweep.group_line(results, "stacked") == (
        "solo, 2 runs one after the other (scale=0.3,seed=0, scale=1,seed=0): "
        "its learning-rate scheduler follows its own validation loss (ReduceLROnPlateau)"
    )
    for run, result in zip(runs, results, strict=True):
        assert result["status"] == "ok", result["error"]
        assert re.fullmatch(
            r"run scale=(0\.3|1),seed=0: ok, acc \d+\.\d\d %, \d+\.\d s", sweep.run_line(result)
        )
        assert (run.directory / "checkpoints").is_dir()


def test_a_run_alone_on_its_worker_says_why():
    alone = [{"run": "scale=1,seed=0", "trained": "solo", "status": "ok"}]
    assert sweep.group_line(alone, "solo") == "solo (scale=1,seed=0): --mode solo"
    assert sweep.group_line(alone, "stacked", partners=1) == (
        "solo (scale=1,seed=0): its stack of 2 runs was split over workers that would otherwise sit idle"
    )
    assert sweep.group_line(alone, "stacked") == (
        "solo (scale=1,seed=0): no other run differs from it only in "
        "data settings, seeds and optimizer settings"
    )
    runs = plan(
        str(DEFAULT_CONFIG),
        {"data.scale": [0.3, 1.0], "model.optimizer": ["SGD", "Adam"]},
        [0],
        [],
        Path("s"),
        1,
        None,
    )
    assert sweep.Progress(runs, "stacked").could_stack_with == {run.name: 1 for run in runs}


def test_binclf_help_names_the_sweep_and_neither_imports_lightning():
    """The top-level help lists binclf-sweep, installed with the study; both helps answer without importing
    torch or Lightning."""
    for module in ("binclf", "binclf.study.sweep"):
        result, heavy = heavy_imports(module, "--help")
        assert result.returncode == 0, result.stderr[-2000:]
        assert heavy == [], module
    flat = " ".join(heavy_imports("binclf", "--help")[0].stdout.split())
    assert "binclf-sweep the same binclf fit and test over a grid of settings and seeds" in flat


@pytest.mark.slow
def test_a_sweep_runs_config_works_again_with_c(tmp_path, monkeypatch, capsys):
    """A run of a sweep, as its worker runs it; then its config with binclf test (that run) and with binclf
    fit (a new run with the same settings)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])
    fit_settings = [arg for arg in SMALL if arg.split("=")[0].removeprefix("--") not in OWNED]
    [run] = plan(str(DEFAULT_CONFIG), {"data.scale": [0.5]}, [0], fit_settings, tmp_path / "sweep", 1, None)
    run.directory.mkdir(parents=True)
    run_command(run.args)
    saved = run.directory / "config.yaml"
    capsys.readouterr()
    run_command(["test", "-c", str(saved)])
    assert capsys.readouterr().out.startswith(f"testing {run.directory}, the run whose config was given")
    again = run_command(["fit", "-c", str(saved)])
    assert Path(again.trainer.log_dir) == run.directory.parent / "version_0"
    assert again.datamodule.gaussians.scale_a == 0.5


@pytest.mark.slow
def test_a_table_study_reports_what_a_table_has_and_no_bayes_rule(tmp_path):
    """A learning-rate study on the example table, through a real ``binclf-sweep``: accuracy alone (no
    Bayes rule row, panel or llr table), and the data figure by the table's own column and class names."""
    configs = DEFAULT_CONFIG.parent
    command = [
        str(Path(sys.executable).parent / "binclf-sweep"),
        f"--base_config={configs / 'tabular_example.yaml'}",
    ]
    command += ['--grid={"model.optimizer.lr": [0.01, 0.03]}', "--seeds=[0, 1]", "--steps=20", "--name=table"]
    command += [f"--args=[--data.path={configs / 'examples' / 'emails.csv'}]", f"--root={tmp_path}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    study = tmp_path / "table"
    tables = (study / "results.md").read_text()
    assert "Test accuracy (%)" in tables
    assert "Bayes" not in tables
    assert "log-likelihood ratio" not in tables
    assert {path.name for path in study.glob("*.png")} == {"accuracy.png", "data_grid.png"}
    rows = {row["run"]: row for row in csv.DictReader((study / "results.csv").open())}
    assert not [column for column in next(iter(rows.values())) if "bayes" in column]
    for run in rows:
        histogram = json.loads((study / "runs" / run / "result.json").read_text())["histogram"]
        assert histogram["classes"] == ["ham", "spam"]
        assert histogram["axis"] == "links (first feature)"


@pytest.mark.slow
def test_a_sweep_into_a_pipe_says_how_far_each_running_stack_is(tmp_path):
    """A stack held at a known step (its network waits for a file as it computes its 12th forward pass),
    and a progress line every 0.2 s: the lines say how many steps of how many the stack has done, the held
    step among them, and the sweep ends normally once let go."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["model"]["network"] = {
        "class_path": "faults.HeldAtCall",
        "init_args": {"folder": str(tmp_path), "call": 12, "hidden_sizes": [64, 64]},
    }
    config["data"] |= {"num_samples": 200, "num_val_samples": 200}
    (tmp_path / "held.yaml").write_text(yaml.safe_dump(config))
    command = [str(Path(sys.executable).parent / "binclf-sweep"), f"--base_config={tmp_path / 'held.yaml'}"]
    command += ['--grid={"data.scale": [0.3, 1.0]}', "--steps=100", "--workers=1", "--progress_every=0.2"]
    command += ["--args=[--data.num_test_samples=200, --data.batch_size=64]", f"--root={tmp_path}"]
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )
    progress_file = tmp_path / "sweep" / "runs" / "scale=0.3,seed=0" / "progress"
    lines: list[str] = []
    held_at = None  # the step the stack is held after, once it is held
    try:
        while held_at is None or not lines[-1].endswith(f"step {held_at} of 100"):
            readable, _, _ = select.select([process.stdout], [], [], 300)  # a hang's limit, not a race
            line = process.stdout.readline() if readable else ""
            assert line, f"the sweep ended, or said nothing, before the stack was held: {lines}"
            assert len(lines) < 10_000, lines[-5:]  # lines keep coming, but never the held step
            lines.append(line.rstrip("\n"))
            if held_at is None and (tmp_path / "held").exists():
                held_at = int(progress_file.read_text().split()[0])
        assert held_at > 0
        (tmp_path / "go").touch()
        out, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, err[-2000:]
    lines += out.splitlines()
    progress = [line for line in lines if line.startswith("running, ")]
    shape = r"running, \d+ s in: stack of 2 \(scale=0\.3,seed=0, \.\.\.\): (building|step \d+ of 100)"
    assert progress
    assert all(re.fullmatch(shape, line) for line in progress), progress
    assert "run scale=1,seed=0: ok" in "\n".join(lines)


def test_the_sweeps_own_process_writes_its_results_and_report_without_torch_or_lightning(tmp_path):
    """results.csv is written through binclf.safe_io, which needs only the standard library, and the report
    drawn with matplotlib and written to TensorBoard with its own event writer: the sweep's own process loads
    neither torch nor Lightning (its workers do, to train), whose import and teardown would add seconds to
    every sweep."""
    row = {"status": "ok", "seed": 0, "data.scale": 0.5, "data.num_samples": 100, "test/acc": 0.9}
    code = (
        "import sys, pathlib, binclf.study.sweep, binclf.safe_io, binclf.study.report as report; "
        f"report.report([{row!r}], pathlib.Path(sys.argv[1]), 'data.scale', 'data.num_samples'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'torch')))"
    )
    command = [sys.executable, "-c", code, str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    assert list((tmp_path / "summary").glob("events.out.tfevents.*"))  # the report was written


def test_only_the_sweeps_forkserver_ends_without_teardown():
    """The module the forkserver preloads makes the process end at once (status 0, skipping the rest) only
    where its parent is the sweep that the environment names; anywhere else it changes nothing."""
    code = "import sys, binclf.study.forkserver; sys.exit(3)"
    for parent, status in [(str(os.getpid()), 0), ("1", 3)]:
        environment = os.environ | {SWEEP_PROCESS: parent}
        command = [sys.executable, "-c", code]
        result = subprocess.run(command, env=environment, capture_output=True, check=False)
        assert result.returncode == status, result.stderr[-2000:]


def test_at_a_terminal_the_sweep_waits_on_its_tasks_instead_of_polling(monkeypatch):
    """At a terminal the progress bar shows how far the sweep is and no progress line is ever due, so the
    sweep waits on its tasks with no timeout; into a file, until the next line."""
    runs = plan(str(DEFAULT_CONFIG), {"data.scale": [0.3, 1.0]}, [0], [], Path("s"), 1, None)
    into_a_file = sweep.Progress(runs, "stacked", every=30.0)
    assert 0.0 < into_a_file.seconds_to_next() <= 30.0
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    at_a_terminal = sweep.Progress(runs, "stacked", every=0.0)
    try:
        assert at_a_terminal.seconds_to_next() is None
    finally:
        at_a_terminal.close()
