"""Each workaround in ``binclf.workarounds`` relies on a library internal; each test here fails when that
internal changes, instead of letting the workaround become a silent no-op."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from faults import CountingProfiler
from helpers import DEFAULT_CONFIG, SMALL

import binclf.checkpoint
from binclf.checkpoint import load_checkpoint
from binclf.cli import BinclfCLI, run_command
from binclf.data import TwoGaussianDataModule
from binclf.workarounds import (
    built_by_lightning_cli,
    datamodule_state_key,
    lightning_cli_settings,
    once_per_point,
)


def test_lightning_cli_says_when_it_builds_the_module(binclf):
    assert not built_by_lightning_cli()  # building from Python
    fit = binclf("fit", "--trainer.max_epochs=1")
    # Built by the CLI, the module kept the parsed config of its network and optimizer: what rebuilds them
    # from a checkpoint. Had the private context variable stopped being set, these would be missing.
    assert fit.model.hparams["network"]["class_path"] == "binclf.networks.MLP"
    assert fit.model.hparams["optimizer"]["class_path"] == "torch.optim.SGD"


def test_a_module_built_from_another_config_records_that_configs_settings(monkeypatch):
    """A sweep's stack builds each member with its first run's parser: each member's checkpoint must record
    its own optimizer, which it does only while LightningCLI takes the settings from ``config_dump``."""
    monkeypatch.setattr(sys, "argv", ["binclf"])
    cli = BinclfCLI("fit", ["-c", str(DEFAULT_CONFIG), "--model.optimizer.lr=0.05"])
    other = cli.parser.parse_args(["-c", str(DEFAULT_CONFIG), "--model.optimizer.lr=0.2"])
    assert cli.instantiated(other).model.hparams["optimizer"]["init_args"]["lr"] == 0.2
    assert cli.instantiated(cli.config).model.hparams["optimizer"]["init_args"]["lr"] == 0.05


def test_the_settings_a_module_records_are_those_lightning_cli_would_dump(monkeypatch):
    """``hyperparameters_of`` dumps the config as JSON where LightningCLI dumps it as YAML and reads it back:
    the module must record the same plain data either way (numbers, lists, nulls, class paths)."""
    monkeypatch.setattr(sys, "argv", ["binclf"])
    args = ["-c", str(DEFAULT_CONFIG), "--model.optimizer=Adam", "--model.optimizer.betas=[0.8, 0.99]"]
    args += ["--model.optimizer.eps=1e-12", "--trainer.max_steps=7", "--data.scale=0.25"]
    cli = BinclfCLI("fit", args)
    cli.instantiated(cli.config)
    recorded = cli.config_dump  # as binclf built the module
    del cli.config_dump
    cli._dump_config()  # LightningCLI's own, through YAML
    assert recorded == cli.config_dump
    assert recorded["model"]["optimizer"]["init_args"]["betas"] == [0.8, 0.99]


@pytest.mark.slow
def test_the_quick_exit_still_joins_threads_and_runs_atexit_handlers(tmp_path):
    script = textwrap.dedent(
        f"""
        import atexit, threading
        from pathlib import Path
        from binclf.workarounds import exit_without_teardown

        go = threading.Event()
        def worker():
            go.wait()
            Path({str(tmp_path / "thread")!r}).touch()
        threading.Thread(target=worker).start()
        atexit.register(lambda: Path({str(tmp_path / "atexit")!r}).touch())
        go.set()
        exit_without_teardown(3)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 3, result.stderr
    assert (tmp_path / "thread").exists()
    assert (tmp_path / "atexit").exists()


def test_lightning_still_asks_the_profiler_around_every_hook(binclf):
    fit = binclf("fit", "--trainer.max_epochs=1", "--trainer.profiler=faults.CountingProfiler")
    assert isinstance(fit.trainer.profiler, CountingProfiler)
    # The no-op profiler saves a context manager per call; it is worth nothing if Lightning stops calling.
    assert fit.trainer.profiler.calls > 10 * fit.trainer.global_step


def test_the_checkpoint_is_read_once_and_lightning_cli_does_not_read_it_again(fitted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])
    reads: list[str] = []
    load = torch.load

    def counting_load(path, *args, **kwargs):
        reads.append(str(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    run_command(["test", "-c", str(DEFAULT_CONFIG), *SMALL, "--ckpt_path", str(fitted)])
    assert reads.count(str(fitted)) == 1
    assert binclf.checkpoint.torch.load is counting_load  # the count saw every read binclf makes


def test_a_mean_metric_that_lets_nan_show_still_ignores_weights():
    from torchmetrics import MeanMetric

    batches = [(torch.tensor(1.0), 64), (torch.tensor(0.0), 16)]  # a full batch, then a short last one
    dropped = MeanMetric(nan_strategy="disable")
    for mean, points in batches:
        dropped.update(mean, weight=points)
    # The torchmetrics bug once_per_point works around: when this fails, weight= works, and it can go.
    assert dropped.compute() == pytest.approx(0.5)
    per_point = MeanMetric(nan_strategy="disable")
    for mean, points in batches:
        per_point.update(once_per_point(mean, points))
    assert per_point.compute() == pytest.approx(64 / 80)
    per_point.update(torch.tensor(float("nan")).expand(3))
    assert per_point.compute().isnan()  # and a NaN loss still shows


def test_lightning_cli_still_saves_the_class_and_its_own_function_beside_the_settings(fitted):
    contents = load_checkpoint(fitted)
    data, model = contents["datamodule_hyper_parameters"], contents["hyper_parameters"]
    # What lightning_cli_settings takes apart: when this fails, LightningCLI saves hyperparameters otherwise.
    assert data["_class_path"] == "binclf.data.TwoGaussianDataModule"
    assert data["_instantiator"] == model["_instantiator"] == "lightning.pytorch.cli.instantiate_module"
    class_path, settings = lightning_cli_settings(data)
    assert class_path == "binclf.data.TwoGaussianDataModule"
    assert not [key for key in settings if key.startswith("_")]
    assert settings["num_samples"] == 1000


def test_lightning_still_keeps_a_data_modules_state_under_its_class_name(fitted):
    contents = load_checkpoint(fitted)
    key = datamodule_state_key(TwoGaussianDataModule())
    assert contents[key]["trained_num_samples"] == 1000  # what restore_data_state hands the data module


@pytest.mark.slow
def test_ending_now_runs_nothing_on_the_way_out(tmp_path):
    script = textwrap.dedent(
        f"""
        import atexit
        from pathlib import Path
        from binclf.workarounds import end_now

        atexit.register(lambda: Path({str(tmp_path / "atexit")!r}).touch())
        end_now(5)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 5, result.stderr
    assert not (tmp_path / "atexit").exists()
