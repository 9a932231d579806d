"""binclf-sweep end to end on a tiny grid: results, figures, a forced failure, and resuming."""

import csv
import json

import pytest

from binclf.gaussians import normal_cdf
from binclf.sweep import main

PNG = b"\x89PNG\r\n\x1a\n"


def read_rows(path):
    with path.open() as file:
        return {row["run"]: row for row in csv.DictReader(file)}


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
    assert "File exists" in failed["error"]
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
