"""What a run is, through the real commands: each evaluates the run it names in one line, on the data it was
trained on unless told otherwise; each saved config works again with ``-c``; a finished run is left alone."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from helpers import SMALL
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata, plugin_data_pb2

from binclf.cli import run_command
from binclf.data.examples import write_examples
from binclf.main import cli_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])
    return tmp_path


def hparams_row(run: Path) -> dict:
    accumulator = EventAccumulator(str(run))
    accumulator.Reload()
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {name: value.number_value or value.string_value for name, value in start.hparams.items()}


def test_a_run_is_tested_on_its_own_data_and_on_other_data_when_asked(in_tmp, capsys):
    # The user's case: fit wide Gaussians under a name, then test that name without a config.
    run_command(["fit", *SMALL, "--data.scale=0.8", "--run_name=wide"])
    run = Path("lightning_logs/wide/version_0")
    capsys.readouterr()
    own = run_command(["test", *SMALL, "--run_name=wide"]).trainer.callback_metrics
    said = capsys.readouterr().out.splitlines()[0]
    assert said.startswith(f"testing {run}, the latest run named wide: epoch=")
    assert said.endswith(
        "on its own data (TwoGaussianDataModule, num_samples 1000, scale 0.8, batch_size 64, "
        "num_val_samples 500, …)"
    )
    assert float(own["test/bayes_acc_analytic"]) == pytest.approx(0.734, abs=1e-3)  # Φ(0.5 / 0.8)
    assert "test_data" not in hparams_row(run)
    other = run_command(["test", *SMALL, "--run_name=wide", "--data.scale=0.2"]).trainer.callback_metrics
    said = capsys.readouterr().out.splitlines()[0]
    assert said.endswith("on other data: scale 0.2, trained on 0.8")
    assert float(other["test/bayes_acc_analytic"]) == pytest.approx(0.9938, abs=1e-3)  # Φ(0.5 / 0.2)
    row = hparams_row(run)  # the run's row says what its test metrics were measured on
    assert (row["data.scale"], row["test_data"]) == (pytest.approx(0.8), "scale 0.2, trained on 0.8")
    saved = yaml.safe_load((run / "config.test-2.yaml").read_text())
    assert saved["data"]["init_args"]["scale"] == 0.2
    run_command(["test", *SMALL, "--run_name=wide"])
    assert "test_data" not in hparams_row(run)  # tested on its own data again


def table_project(folder: Path, seed: int) -> Path:
    """A project of one's own: a table and a config that trains on it."""
    write_examples(folder, seed=seed)
    config = yaml.safe_load((CONFIGS / "tabular_example.yaml").read_text())
    config["data"]["init_args"]["path"] = str(folder / "emails.csv")
    config["trainer"]["max_epochs"] = 2
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml"


@pytest.mark.slow
def test_two_table_projects_in_one_folder_each_test_their_own_run(in_tmp, capsys):
    first, second = table_project(in_tmp / "first", seed=1), table_project(in_tmp / "second", seed=2)
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    run_command(["fit", "-c", str(first), *quiet])  # version_0
    run_command(["fit", "-c", str(second), *quiet])  # version_1, the newest
    capsys.readouterr()
    test = run_command(["test", "-c", str(first), *quiet])
    said = capsys.readouterr().out.splitlines()[0]
    assert said.startswith("testing lightning_logs/version_0, the latest run of this data: ")
    assert test.trainer.callback_metrics["test/acc"] > 0.8


def test_the_config_of_an_older_run_evaluates_that_run(binclf, tmp_path, capsys):
    binclf("fit", "--trainer.max_epochs=1")
    binclf("fit", "--trainer.max_epochs=1")
    capsys.readouterr()
    run_command(["test", "-c", "lightning_logs/version_0/config.yaml"])
    assert capsys.readouterr().out.startswith(
        "testing lightning_logs/version_0, the run whose config was given: "
    )
    assert (tmp_path / "lightning_logs/version_0/config.test-1.yaml").is_file()
    assert not (tmp_path / "lightning_logs/version_1/config.test-1.yaml").exists()


def test_validate_prints_its_metrics(binclf, capsys):
    binclf("fit", "--trainer.max_epochs=1")
    capsys.readouterr()
    metrics = binclf("validate").trainer.callback_metrics
    out = capsys.readouterr().out
    assert "Validation summary" in out
    for key in ("loss/val", "val/acc"):
        assert f"  {key:<22}{float(metrics[key]):.5g}\n" in out


@pytest.mark.parametrize(
    ("flag", "name", "settings"),
    [
        ("--data.help", "TwoGaussianDataModule", ["--data.scale SCALE", "--data.standardize {true,false}"]),
        ("--data.help", "TabularDataModule", ["--data.path PATH", "--data.label_column LABEL_COLUMN"]),
        ("--model.network.help", "MLP", ["--model.network.hidden_sizes [ITEM,...]"]),
    ],
)
def test_a_class_help_lists_that_classes_settings(flag, name, settings, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["binclf"])
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", flag, name])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ")
    assert all(setting in out for setting in settings), out[:3000]
    assert "subcommands:" not in out  # not binclf's own help


def test_resuming_a_finished_run_says_so_and_writes_nothing(binclf, tmp_path, capsys):
    binclf("fit", "--trainer.max_epochs=1")
    run = tmp_path / "lightning_logs" / "version_0"
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    capsys.readouterr()
    binclf("fit", "--trainer.max_epochs=1", "--ckpt_path=last")
    out = capsys.readouterr().out
    assert out == (
        "lightning_logs/version_0 has trained as far as asked: it is at epoch 1, and "
        "trainer.max_epochs is 1; nothing was trained or written\n"
    )
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before


def test_a_resume_to_more_epochs_updates_the_runs_hparams_row(binclf, tmp_path):
    binclf("fit", "--trainer.max_epochs=1")
    run = tmp_path / "lightning_logs" / "version_0"
    assert hparams_row(run)["trainer.max_epochs"] == 1
    binclf("fit", "--trainer.max_epochs=2", "--ckpt_path=last")
    assert hparams_row(run)["trainer.max_epochs"] == 2
    saved = yaml.safe_load((run / "config.resumed-1.yaml").read_text())
    assert (saved["trainer"]["max_epochs"], saved["ckpt_path"]) == (2, "last")


def test_every_config_binclf_saves_works_again_with_c(binclf, tmp_path, capsys):
    binclf("fit", "--trainer.max_epochs=1")
    run = Path("lightning_logs/version_0")
    binclf("test")
    binclf("fit", "--trainer.max_epochs=2", "--ckpt_path=last")
    capsys.readouterr()
    # Each with the command that wrote it: the fit's config tests its run, or fits a new one beside it.
    run_command(["test", "-c", str(run / "config.yaml")])
    assert capsys.readouterr().out.startswith(f"testing {run}, the run whose config was given")
    again = run_command(["fit", "-c", str(run / "config.yaml")])
    assert Path(again.trainer.log_dir) == tmp_path / "lightning_logs" / "version_1"
    said = (run / "config.test-1.yaml").read_text().splitlines()[0]  # what the test ran on
    assert said.startswith(f"# testing {run}, the latest run of this data: epoch=0-step=32-")
    tested = run_command(["test", "-c", str(run / "config.test-1.yaml")])  # the run's best now
    assert tested.trainer.callback_metrics["test/acc"] > 0.9
    capsys.readouterr()
    run_command(["fit", "-c", str(run / "config.resumed-1.yaml")])  # that resume has trained as asked
    assert "has trained as far as asked" in capsys.readouterr().out
