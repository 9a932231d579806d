"""End to end: the real CLI, in-process, on a shrunken default config inside a temporary directory."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import heavy_imports
from lightning.pytorch.profilers import SimpleProfiler

from binclf import __version__ as binclf_version
from binclf.cli import run_command
from binclf.main import cli_main
from binclf.networks import MLP
from binclf.usage import SUBCOMMANDS
from binclf.workarounds import NullProfiler


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
def test_fit_then_test_and_predict_use_the_best_checkpoint(binclf, tmp_path, capsys):
    fit = binclf("fit")
    run = tmp_path / "lightning_logs" / "version_0"
    best = Path(fit.trainer.checkpoint_callback.best_model_path)
    assert best.parent == run / "checkpoints"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file()
    assert not (tmp_path / "config.yaml").exists()  # saved in the run, not the working directory
    assert f"Best checkpoint: {best}" in capsys.readouterr().out

    test = binclf("test")
    said = f"testing lightning_logs/version_0, the latest run of this data: {best.name}"
    assert capsys.readouterr().out.startswith(said)
    metrics = test.trainer.callback_metrics
    assert metrics["test/acc"] > 0.95  # an untrained model scores about 0.5
    assert metrics["test/auroc"] > 0.98
    assert metrics["test/loss"] < 0.3

    # The same numbers as naming the best file explicitly.
    explicit = binclf("test", f"--ckpt_path={best}")
    assert explicit.trainer.callback_metrics["test/acc"] == metrics["test/acc"]

    predict = binclf("predict")
    csv_path = predict.trainer.log_dir and Path(predict.trainer.log_dir) / "predictions.csv"
    assert csv_path.parent == run  # predictions go into the run that was fitted
    rows = read_csv(csv_path)
    assert list(rows[0]) == ["index", "x", "logit", "probability", "predicted_label"]
    assert [int(r["index"]) for r in rows] == list(range(101))
    x = [float(r["x"]) for r in rows]
    p = [float(r["probability"]) for r in rows]
    assert x[0] == pytest.approx(0.0)
    assert x[-1] == pytest.approx(3.0)
    assert all(0.0 <= q <= 1.0 for q in p)
    assert all(r["predicted_label"] == str(int(float(r["probability"]) > 0.5)) for r in rows)
    assert p[0] < 0.05  # deep in class a
    assert p[-1] > 0.95  # deep in class b
    boundary = x[next(i for i, q in enumerate(p) if q > 0.5)]
    assert boundary == pytest.approx(1.5, abs=0.15)  # the Bayes boundary lies halfway between the means


@pytest.mark.slow
def test_ckpt_path_last_takes_the_latest_fit_and_skips_evaluation_runs(binclf, tmp_path, capsys):
    binclf("fit")
    shutil.copy(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", tmp_path / "elsewhere.ckpt")
    binclf("test", "--ckpt_path=elsewhere.ckpt")  # outside any run: creates version_1, with no checkpoint
    assert not list((tmp_path / "lightning_logs" / "version_1").glob("**/*.ckpt"))
    binclf("fit", "--trainer.max_epochs=1")  # version_2
    capsys.readouterr()
    binclf("validate", "--ckpt_path=last")
    said = "validating lightning_logs/version_2, the latest run of this data: last.ckpt"
    assert capsys.readouterr().out.startswith(said)


def test_optimizer_is_swapped_from_the_command_line_and_rebuilt_from_the_checkpoint(binclf, tmp_path):
    fit = binclf("fit", "--model.optimizer=Adam", "--model.optimizer.lr=0.003")
    optimizer = fit.trainer.optimizers[0]
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.defaults["lr"] == 0.003
    # `test` builds the optimizer and network from the checkpoint's settings, whatever the config says, and
    # its saved config records them.
    test = binclf("test")
    assert test.model.optimizer.func is torch.optim.Adam
    assert test.model.optimizer.keywords["lr"] == 0.003
    saved = yaml.safe_load((tmp_path / "lightning_logs/version_0/config.test-1.yaml").read_text())
    assert saved["model"]["optimizer"]["class_path"] == "torch.optim.Adam"


def test_network_is_rebuilt_from_the_checkpoint_not_the_config(binclf):
    binclf("fit", "--model.network.init_args.hidden_sizes=[16]")
    test = binclf("test")  # the config still says [64, 64]
    network = test.model.network
    assert isinstance(network, MLP)
    assert network.layers[0].out_features == 16
    assert test.trainer.callback_metrics["test/acc"] > 0.9


def test_same_seed_gives_identical_runs(binclf, tmp_path):
    first = binclf("fit")
    second = binclf("fit")
    for key in ("loss/val", "val/acc"):
        assert first.trainer.callback_metrics[key] == second.trainer.callback_metrics[key]
    weights = [
        torch.load(tmp_path / f"lightning_logs/version_{v}/checkpoints/last.ckpt", weights_only=True)[
            "state_dict"
        ]
        for v in (0, 1)
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
def test_a_runs_saved_config_tests_that_run_and_repeats_it(binclf, tmp_path):
    """``lightning_logs/version_0/config.yaml`` is a config like any other: it names no run folder."""
    first = binclf("fit", "--model.calibration=temperature")
    run = tmp_path / "lightning_logs" / "version_0"
    test = run_command(["test", "-c", str(run / "config.yaml")])
    assert Path(test.trainer.log_dir) == run
    assert (run / "config.test-1.yaml").exists()
    again = run_command(["fit", "-c", str(run / "config.yaml")])
    assert Path(again.trainer.log_dir) == tmp_path / "lightning_logs" / "version_1"
    assert again.model.calibration == "temperature"
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name


def test_model_seed_changes_weights_but_not_data(binclf):
    first = binclf("fit", "--seed_everything=1")
    second = binclf("fit", "--seed_everything=2")
    assert torch.equal(first.datamodule.train_set.features, second.datamodule.train_set.features)
    assert first.trainer.callback_metrics["loss/val"] != second.trainer.callback_metrics["loss/val"]


def test_torch_threads_setting(binclf):
    threads = torch.get_num_threads()
    try:
        binclf("fit", "--trainer.max_epochs=1", "--torch_threads=2")  # not the default, so this can fail
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_a_configured_profiler_replaces_the_default_one_that_records_nothing(binclf):
    assert type(binclf("fit", "--trainer.max_epochs=1").trainer.profiler) is NullProfiler
    profiled = binclf("fit", "--trainer.max_epochs=1", "--trainer.profiler=simple").trainer.profiler
    assert isinstance(profiled, SimpleProfiler)
    assert "run_training_batch" in profiled.recorded_durations


def test_help_and_mistakes_see_every_subcommand(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["binclf"])
    with pytest.raises(SystemExit):
        run_command(["fit", "--help"])
    assert "--trainer.max_epochs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run_command(["--help"])
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("fit", "validate", "test", "predict"))
    with pytest.raises(SystemExit):
        cli_main(["fitt"])
    choices = "(choose from 'fit', 'validate', 'test', 'predict')"
    assert (
        capsys.readouterr().err
        == f"binclf: error: argument subcommand: invalid choice: 'fitt' {choices}; did you mean fit?\n"
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", [["binclf"], [sys.executable, "-m", "binclf"]])
def test_console_script_and_module_are_the_same_command(command):
    bin_dir = Path(sys.executable).parent
    argv = [str(bin_dir / "binclf")] if command == ["binclf"] else command
    result = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    for subcommand in ("fit", "validate", "test", "predict"):
        assert subcommand in result.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_and_test_on_gpu(binclf):
    fit = binclf("fit", "--trainer.accelerator=gpu", "--trainer.devices=1")
    assert fit.trainer.strategy.root_device.type == "cuda"
    test = binclf("test", "--trainer.accelerator=gpu", "--trainer.devices=1")
    assert test.trainer.callback_metrics["test/acc"] > 0.95


@pytest.mark.slow
def test_default_config_reaches_the_articles_accuracy(binclf):
    """The article's settings, unshrunk: 70 epochs on 20,000 samples. The Bayes limit is 99.38 %."""
    binclf("fit", "--trainer.enable_progress_bar=false", small=False)
    test = binclf("test", "--trainer.enable_progress_bar=false", small=False)
    metrics = test.trainer.callback_metrics
    assert metrics["test/acc"] >= 0.992
    # As close to the Bayes rule, on the same 20,000 points, as sampling noise allows.
    assert abs(metrics["test/acc_gap"]) <= 2 * metrics["test/acc_gap_se"]


def test_test_reports_the_oracle_metrics_and_a_summary(binclf, capsys):
    binclf("fit")
    capsys.readouterr()
    metrics = binclf("test").trainer.callback_metrics
    out = capsys.readouterr().out
    for line in (
        "Test summary",
        "Bayes rule, same data",
        "analytic limit 99.379 %",
        "gap to Bayes",
        "llr RMSE",
    ):
        assert line in out
    assert metrics["test/bayes_acc_analytic"] == pytest.approx(0.993790, abs=1e-6)
    # The Bayes rule on these 2,000 test points, and the paired gap, computed here independently.
    assert metrics["test/acc_gap"] == pytest.approx(
        float(metrics["test/bayes_acc"] - metrics["test/acc"]), abs=1e-6
    )
    assert 0 < metrics["test/acc_gap_se"] < 0.01
    assert 0 <= metrics["test/ece"] < 0.1
    assert 0 <= metrics["test/brier"] < 0.1
    assert 0 < metrics["test/llr_rmse"] < 10


def test_dimension_follows_the_data_through_one_setting(binclf, tmp_path):
    fit = binclf("fit", "--data.dim=3", "--data.mean_b=[2.0, 1.0, 1.0]", "--data.scale=[0.5, 0.6]")
    assert fit.model.network.layers[0].in_features == 3
    test = binclf("test", "--data.dim=3", "--data.mean_b=[2.0, 1.0, 1.0]", "--data.scale=[0.5, 0.6]")
    metrics = test.trainer.callback_metrics
    assert "test/bayes_acc_analytic" not in metrics  # unequal scales: no closed form
    # Within a few points of the best possible on these test points, and not beyond it but for noise.
    assert metrics["test/bayes_acc"] - 0.05 < metrics["test/acc"]
    assert metrics["test/acc"] <= metrics["test/bayes_acc"] + 3 * metrics["test/acc_gap_se"]
    predict = binclf("predict", "--data.dim=3", "--data.mean_b=[2.0, 1.0, 1.0]", "--data.scale=[0.5, 0.6]")
    rows = read_csv(Path(predict.trainer.log_dir) / "predictions.csv")
    assert list(rows[0])[:4] == ["index", "x0", "x1", "x2"]


@pytest.mark.slow
def test_a_bad_setting_ends_with_one_line_no_traceback_and_no_run(binclf_process, tmp_path):
    result = binclf_process("fit", "--data.scale=-1")
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == "binclf: error: scale must lie between 1e-06 and 1e+06, got -1.0"
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "lightning_logs").exists()
    debug = binclf_process("fit", "--data.scale=-1", env={"BINCLF_DEBUG": "1"})
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr


def test_fast_dev_run_is_a_smoke_test_that_leaves_nothing_behind(binclf, tmp_path, capsys):
    binclf("fit", "--trainer.fast_dev_run=true")
    assert "fast_dev_run: nothing was saved" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # no figures in the working folder, no empty run folder


def test_the_best_checkpoint_is_named_after_the_metric_it_is_chosen_by(binclf, tmp_path):
    binclf("fit", "--trainer.max_epochs=2")
    binclf("fit", "--trainer.max_epochs=2", "--checkpoint.monitor=val/acc", "--checkpoint.mode=max")
    runs = tmp_path / "lightning_logs"
    by_loss, by_accuracy = (
        sorted(path.name for path in (runs / f"version_{n}" / "checkpoints").glob("epoch=*.ckpt"))
        for n in (0, 1)
    )
    assert by_loss
    assert all(re.fullmatch(r"epoch=\d+-step=\d+-loss_val=\d\.\d{4}\.ckpt", name) for name in by_loss)
    assert by_accuracy
    assert all(re.fullmatch(r"epoch=\d+-step=\d+-val_acc=\d\.\d{4}\.ckpt", name) for name in by_accuracy)


@pytest.mark.parametrize(
    "command",
    [["binclf", "--version"], ["binclf", "--help"], ["binclf", "-h"]],
    ids=" ".join,
)
def test_version_and_help_answer_without_importing_lightning(command):
    result, heavy = heavy_imports("binclf", *command[1:])
    assert result.returncode == 0, result.stderr[-2000:]
    assert heavy == []
    if command[1] == "--version":
        assert result.stdout == f"binclf {binclf_version}\n"


def test_the_top_level_help_names_binclf_and_its_subcommands_whole(monkeypatch, capsys):
    result = subprocess.run(
        [sys.executable, "-m", "binclf", "--help"], capture_output=True, text=True, check=False
    )
    flat = " ".join(result.stdout.split())
    assert result.stdout.startswith("usage: binclf ")
    for name, description in SUBCOMMANDS.items():  # whole, not cut mid-sentence
        assert f"{name} {' '.join(description.split())}" in flat
    monkeypatch.setattr(sys, "argv", ["binclf"])
    with pytest.raises(SystemExit):
        run_command(["--help"])
    assert capsys.readouterr().out == result.stdout  # the parser's help is the console script's


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        (
            "--trainer.max_epochz=3",
            "unrecognized arguments: --trainer.max_epochz=3; did you mean --trainer.max_epochs?",
        ),
        (
            "--data.sclae=0.3",
            "--data.sclae: TwoGaussianDataModule takes no argument 'sclae'; did you mean --data.scale?",
        ),
        (
            "--model.optimizer.lrr=0.1",
            "--model.optimizer.lrr: SGD takes no argument 'lrr'; did you mean --model.optimizer.lr?",
        ),
    ],
)
def test_a_mistyped_key_gets_one_line_naming_it_and_the_closest_key(mistake, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["binclf"])
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", mistake])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"binclf: error: {message}\n"
