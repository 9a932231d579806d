"""What a person sees of binclf: one TensorBoard run per fit with a readable HParams row, a quiet console,
and a checkpoint lookup that does not fall into another kind of run."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import DEFAULT_CONFIG, SMALL
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import metadata, plugin_data_pb2

from binclf import __version__
from binclf.checkpoint import load_checkpoint
from binclf.cli import run_command
from binclf.main import cli_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def events(run: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.slow
def test_fit_test_and_predict_make_one_tensorboard_run(binclf, tmp_path):
    binclf("fit")
    binclf("test")
    binclf("test")  # again: nothing of the first test is lost
    binclf("predict")
    binclf("predict")
    runs = list((tmp_path / "lightning_logs").iterdir())
    assert [run.name for run in runs] == ["version_0"]
    run = runs[0]
    logged = events(run)
    scalars, images = set(logged.Tags()["scalars"]), set(logged.Tags()["images"])
    assert {"loss/train_step", "loss/train_epoch", "loss/val", "val/acc", "val/acc_best"} <= scalars
    assert {"test/acc", "test/bayes_acc", "test/acc_gap", "test/llr_rmse", "test/ece"} <= scalars
    assert "epoch" not in scalars
    assert "hp_metric" not in scalars
    # TensorBoard shows groups (a tag's part before "/") in name order: the loss curves come first, then the
    # article's figures.
    groups = sorted({tag.split("/")[0] for tag in scalars | images})
    assert groups[:2] == ["loss", "paper"]
    assert {tag for tag in scalars | images if tag.startswith(("loss/", "paper/"))} == {
        "loss/train_step",
        "loss/train_epoch",
        "loss/val",
        "paper/fig1_data_histogram",
        "paper/fig2_training_loss",
    }
    assert len(logged.Scalars("test/acc")) == 2
    # At the end of the run's curves, where the checkpoint was trained to, the figures beside the scalars.
    last_step = max(event.step for event in logged.Scalars("loss/val"))
    test_steps = {event.step for event in logged.Scalars("test/acc")}
    assert len(test_steps) == 1
    assert test_steps.pop() > last_step
    assert {event.step for event in logged.Images("plots/test_roc")} == {
        event.step for event in logged.Scalars("test/acc")
    }
    fitted = {"posterior", "logit_vs_llr", "roc", "reliability"}
    tested = {"data_histogram", "posterior", "logit_vs_llr", "roc", "reliability"}
    assert {f"plots/{name}" for name in fitted} | {f"plots/test_{name}" for name in tested} <= images
    fitted |= {"training_loss", "data_histogram"}
    # predict logs nothing, and leaves no event file that TensorBoard would list as an empty run.
    for path in run.glob("events.out.tfevents.*"):
        assert any(event.HasField("summary") for event in EventFileLoader(str(path)).Load()), path.name
    assert {f"{name}.png" for name in fitted} | {f"test_{name}.png" for name in tested} <= {
        path.name for path in run.glob("*.png")
    }
    assert {path.name for path in run.glob("*.csv")} == {"predictions.csv", "predictions-2.csv"}
    configs = {path.name for path in run.glob("config*.yaml")}
    assert configs == {
        "config.yaml",
        "config.test-1.yaml",
        "config.test-2.yaml",
        "config.predict-1.yaml",
        "config.predict-2.yaml",
    }


@pytest.mark.slow
def test_the_hparams_table_has_one_readable_row_per_fit(binclf, tmp_path):
    binclf("fit", "--model.lr_scheduler=StepLR", "--model.lr_scheduler.step_size=2")
    binclf("test")
    binclf("fit", "--trainer.max_epochs=1", "--model.calibration=temperature")
    rows = {}
    for run in sorted((tmp_path / "lightning_logs").iterdir()):
        content = events(run).PluginTagToContent(metadata.PLUGIN_NAME)
        # No experiment summary: TensorBoard then offers every scalar of a run as a column, test metrics too.
        assert metadata.EXPERIMENT_TAG not in content
        start = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.SESSION_START_INFO_TAG])
        rows[run.name] = start.session_start_info.hparams
    assert set(rows) == {"version_0", "version_1"}  # the test added no row
    first, second = rows["version_0"], rows["version_1"]
    assert first["data"].string_value == "TwoGaussianDataModule"
    assert first["data.scale"].number_value == pytest.approx(0.2)
    assert first["network.hidden_sizes"].string_value == "[64, 64]"
    assert first["optimizer"].string_value == "SGD"
    assert first["optimizer.lr"].number_value == pytest.approx(0.1)
    assert first["lr_scheduler"].string_value == "StepLR"
    assert second["lr_scheduler"].string_value == "none"
    assert (first["calibration"].string_value, second["calibration"].string_value) == ("none", "temperature")
    assert (first["trainer.max_epochs"].number_value, second["trainer.max_epochs"].number_value) == (3, 1)
    assert first["seed_everything"].number_value == 0
    assert first["data.standardize"].string_value == "false"  # a boolean as text, not 0.0000
    assert "trainer.max_steps" not in first  # off (-1 to Lightning): left out, not shown as -1
    assert not [name for name in first if name.startswith("_")]  # no _instantiator
    run = events(tmp_path / "lightning_logs" / "version_0")
    assert [tag for tag in run.Tags()["scalars"] if tag.endswith("lr")] == ["train/lr"]  # the scheduler


def test_the_training_loss_is_logged_per_step_and_as_each_epochs_mean(binclf, tmp_path):
    # 3 epochs of 2,000 points (1,000 a class) in batches of 64: 32 steps each, the last of 16 points.
    binclf("fit")
    logged = events(tmp_path / "lightning_logs" / "version_0")
    steps = [event.step for event in logged.Scalars("loss/train_step")]
    assert steps == list(range(4, 96, 5))  # every log_every_n_steps (5), across epoch boundaries
    # Every step's loss, as the article's Figure 2 draws it from the checkpoint's DiagnosticFigures state.
    last = load_checkpoint(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    state = next(value for key, value in last["callbacks"].items() if "DiagnosticFigures" in key)
    losses = state["losses"].reshape(3, 32)
    sizes = torch.tensor([64.0] * 31 + [2000 - 31 * 64])
    means = [event.value for event in logged.Scalars("loss/train_epoch")]
    # The mean over the epoch's points, logged at its last step as Lightning logs epoch-end metrics.
    assert [event.step for event in logged.Scalars("loss/train_epoch")] == [31, 63, 95]
    assert means == pytest.approx(((losses * sizes).sum(dim=1) / 2000).tolist(), rel=1e-5)
    assert means != pytest.approx(
        losses.mean(dim=1).tolist(), rel=1e-5
    )  # weighted: the short batch counts less


def test_a_fit_written_to_a_file_is_one_line_per_epoch(binclf, capsys, tmp_path):
    # Under pytest the output is not a terminal, as when it goes to a log file.
    binclf("fit", "--trainer.enable_progress_bar=true", "--trainer.enable_model_summary=true")
    out = capsys.readouterr().out
    assert "%|" not in out  # no progress bar
    assert "\r" not in out
    lines = [line.split() for line in out.splitlines() if line.startswith("epoch ")]
    assert [line[1] for line in lines] == ["1/3", "2/3", "3/3"]
    # Each line has its own epoch's mean training loss, not the one before.
    means = events(tmp_path / "lightning_logs" / "version_0").Scalars("loss/train_epoch")
    assert [line[line.index("loss/train_epoch") + 1] for line in lines] == [f"{e.value:.4g}" for e in means]
    assert "Network, 4,353 trainable parameters:" in out  # the network, not the metric objects
    assert "MeanMetric" not in out


@pytest.mark.slow
def test_test_prints_binclf_summary_and_names_its_checkpoint_once(binclf, capsys):
    fit = binclf("fit")
    best = Path(fit.trainer.checkpoint_callback.best_model_path).name
    capsys.readouterr()
    binclf("test")
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count(best) == 1
    assert "Test summary" in captured.out
    assert "Test metric" not in captured.out  # Lightning's table of raw values
    binclf("test", "--verbose=true")
    assert "Test metric" in capsys.readouterr().out  # still there for those who want it


@pytest.mark.slow
def test_the_lookup_skips_runs_of_another_kind_of_data(tmp_path, monkeypatch, capsys):
    shutil.copytree(CONFIGS, tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])
    tabular = ["-c", "configs/tabular_example.yaml", "--trainer.max_epochs=1"]
    gaussian = ["-c", str(DEFAULT_CONFIG), *SMALL]
    run_command(["fit", *tabular])  # version_0
    with pytest.raises(SystemExit):
        cli_main(["test", *gaussian])
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message == (
        "binclf: error: no run under lightning_logs was trained on this data (TwoGaussianDataModule, dim 1); "
        "the newest are lightning_logs/version_0 (TabularDataModule): pass --ckpt_path FILE, or -c a run's "
        "config.yaml, to evaluate one"
    )
    run_command(["fit", *gaussian, "--trainer.max_epochs=1"])  # version_1
    run_command(["fit", *tabular])  # version_2, the newest
    capsys.readouterr()
    run_command(["test", *gaussian])
    assert "testing lightning_logs/version_1, the latest run of this data: " in capsys.readouterr().out


def test_version_help_and_the_articles_experiment_without_a_config(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["binclf"])
    with pytest.raises(SystemExit):
        run_command(["--version"])
    assert capsys.readouterr().out.strip() == f"binclf {__version__}"
    with pytest.raises(SystemExit):
        run_command(["fit", "--help"])
    help_text = capsys.readouterr().out
    # Settings that take any torch module list binclf's own and count the rest, instead of hundreds.
    assert "binclf.networks.MLP, binclf.networks.LogisticRegression, and" in help_text
    assert "torch.nn.Hardtanh" not in help_text
    with pytest.raises(SystemExit):
        run_command(["fit", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_epochs"] == 70
    # The logger and the progress bar in use, not Lightning's null for "its default".
    assert printed["trainer"]["logger"]["class_path"] == "binclf.monitoring.tensorboard.RunLogger"
    assert printed["trainer"]["logger"]["init_args"]["default_hp_metric"] is False
    assert printed["trainer"]["enable_progress_bar"] is True


def test_a_named_run_is_its_own_folder_and_tensorboard_run(binclf, tmp_path, capsys):
    binclf("fit", "--run_name=ratio-seed0")
    binclf("fit", "--trainer.max_epochs=1")
    binclf("test", "--run_name=ratio-seed0")  # that name's latest run, not the newest fit
    named = tmp_path / "lightning_logs" / "ratio-seed0" / "version_0"
    assert sorted(path.name for path in (tmp_path / "lightning_logs").iterdir()) == [
        "ratio-seed0",
        "version_0",
    ]
    assert {path.name for path in named.glob("config*.yaml")} == {"config.yaml", "config.test-1.yaml"}
    assert "test/acc" in events(named).Tags()["scalars"]
    assert "test/acc" not in events(tmp_path / "lightning_logs" / "version_0").Tags()["scalars"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli_main(["fit", "--run_name=../elsewhere"])
    error = capsys.readouterr().err
    assert error == "binclf: error: --run_name '../elsewhere' is a path, not one name: give one folder name\n"
    assert len(error.splitlines()) == 1


def test_a_terminal_sees_the_command_begin_before_torch_is_imported(tmp_path):
    controller, terminal = pty.openpty()  # stderr is a terminal, as for a person typing the command
    command = [str(Path(sys.executable).parent / "binclf"), "fit", "-c", str(DEFAULT_CONFIG), *SMALL]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal
    )
    os.close(terminal)
    first_line = b""
    while not first_line.endswith(b"\n"):  # waits on the output itself, not on a clock
        first_line += os.read(controller, 1)
    process.terminate()
    assert process.wait(timeout=300) == 143
    os.close(controller)
    assert first_line.decode().strip() == "binclf fit: starting..."
