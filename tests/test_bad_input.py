"""Every way a user can hand binclf bad input ends the same way: one line that names the problem, a non-zero
exit status, no traceback, and no run folder that could pass for a finished run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEFAULT_CONFIG, SMALL

from binclf.cli import cli_main


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small fit, whose checkpoint the checkpoint cases start from or damage."""
    root = tmp_path_factory.mktemp("fitted")
    cwd, argv = os.getcwd(), sys.argv
    os.chdir(root)
    sys.argv = ["binclf"]
    try:
        cli_main(["fit", "-c", str(DEFAULT_CONFIG), *SMALL, "--trainer.max_epochs=1"])
    finally:
        os.chdir(cwd)
        sys.argv = argv
    return root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


def _truncated(fitted: Path, where: Path) -> str:
    data = fitted.read_bytes()
    (where / "truncated.ckpt").write_bytes(data[: len(data) // 2])  # as a kill mid-write would leave it
    return str(where / "truncated.ckpt")


def _corrupted(fitted: Path, where: Path) -> str:
    (where / "corrupted.ckpt").write_bytes(os.urandom(4096))
    return str(where / "corrupted.ckpt")


def _other_architecture(fitted: Path, where: Path) -> str:
    checkpoint = torch.load(fitted, weights_only=True)
    checkpoint["hyper_parameters"]["network"]["init_args"]["hidden_sizes"] = [8]  # weights stay 64 wide
    torch.save(checkpoint, where / "other.ckpt")
    return str(where / "other.ckpt")


def _config_with_unknown_key(fitted: Path, where: Path) -> str:
    (where / "typo.yaml").write_text("data:\n  num_sampels: 100\n")
    return str(where / "typo.yaml")


def _file_in_the_way(fitted: Path, where: Path) -> str:
    (where / "not_a_folder").write_text("")
    return str(where / "not_a_folder" / "logs")


# (subcommand, arguments, what the message must name). A callable argument is built in the test's folder.
CASES = {
    "no samples": ("fit", ["--data.num_samples=0"], "num_samples"),
    "no dimensions": ("fit", ["--data.dim=0"], "dim"),
    "negative scale": ("fit", ["--data.scale=-1"], "scale"),
    "three scales": ("fit", ["--data.scale=[0.1,0.2,0.3]"], "scale"),
    "mean of the wrong length": ("fit", ["--data.mean_a=[1.0,2.0]"], "mean_a"),
    "mean not finite": ("fit", ["--data.mean_b=.nan"], "mean_b"),
    "batch size zero": ("fit", ["--data.batch_size=0"], "batch_size"),
    "evaluation batch size zero": ("fit", ["--data.eval_batch_size=0"], "eval_batch_size"),
    "no validation samples": ("fit", ["--data.num_val_samples=0"], "num_val_samples"),
    "no test samples": ("fit", ["--data.num_test_samples=0"], "num_test_samples"),
    "no predict points": ("fit", ["--data.num_predict_points=0"], "num_predict_points"),
    "negative data seed": ("fit", ["--data.seed=-1"], "seed"),
    "hidden layer of width zero": ("fit", ["--model.network.hidden_sizes=[0]"], "hidden_sizes"),
    "negative learning rate": ("fit", ["--model.optimizer.lr=-1"], "learning rate"),
    "one histogram bin": ("fit", ["--figures.bins=1"], "bins"),
    "one calibration bin": ("fit", ["--figures.calibration_bins=1"], "calibration_bins"),
    "threshold outside (0, 1)": ("fit", ["--predictions.threshold=1.5"], "threshold"),
    "negative thread count": ("fit", ["--torch_threads=-1"], "torch_threads"),
    "missing data file": (
        "fit",
        ["--data=binclf.tabular.TabularDataModule", "--data.path=absent.csv"],
        "absent.csv",
    ),
    "unknown setting": ("fit", ["--data.num_sampels=100"], "num_sampels"),
    "unknown key in a config file": ("fit", ["-c", _config_with_unknown_key], "num_sampels"),
    "wrong type": ("fit", ["--data.num_samples=many"], "num_samples"),
    "missing config file": ("fit", ["-c", "absent.yaml"], "absent.yaml"),
    "missing checkpoint": ("test", ["--ckpt_path=absent.ckpt"], "absent.ckpt"),
    "truncated checkpoint": ("test", ["--ckpt_path", _truncated], "truncated.ckpt is incomplete"),
    "corrupted checkpoint": ("test", ["--ckpt_path", _corrupted], "corrupted.ckpt"),
    "checkpoint of another architecture": ("test", ["--ckpt_path", _other_architecture], "does not fit"),
    "checkpoint for data of another dimension": ("test", ["--data.dim=3", "--ckpt_path", None], "[64, 1]"),
    "resume from a truncated checkpoint": ("fit", ["--ckpt_path", _truncated], "is incomplete"),
    "test with no fit": ("test", [], "no checkpoint found"),
    "validate with no fit": ("validate", [], "no checkpoint found"),
    "predict with no fit": ("predict", [], "no checkpoint found"),
    "unwritable log folder": ("fit", ["--trainer.default_root_dir", _file_in_the_way], "not_a_folder"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_line_naming_it(case, fitted, tmp_path, monkeypatch, capsys):
    subcommand, arguments, named = CASES[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])
    built = [str(fitted) if a is None else a(fitted, tmp_path) if callable(a) else a for a in arguments]
    config = [] if "-c" in built else ["-c", str(DEFAULT_CONFIG)]
    with pytest.raises(SystemExit) as exit_:
        cli_main([subcommand, *config, *SMALL, *built])
    assert exit_.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if err.startswith("usage:"):  # LightningCLI's own parse error, kept: usage, then "error:" and the key
        assert named in err[err.index("\nerror:") :]
    else:
        last = err.strip().splitlines()[-1]
        assert last.startswith("binclf: error:")
        assert named in last
    # Nothing that looks like a run: a failed command leaves no version folder behind.
    assert not list(tmp_path.glob("**/version_*"))
