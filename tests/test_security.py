"""A checkpoint may come from anyone: reading one never imports, builds or calls what it names.

Each route by which a plain-data checkpoint used to run code gets a crafted file here, aimed at a marker
file; the marker must never appear, and the command must end with one line and a non-zero status.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import DEFAULT_CONFIG, SMALL

from binclf.command import cli_main

# A module the attacker hopes to get imported: planted in the working directory, where `python -m` looks
# first. Importing it, or calling its function, creates the marker.
PLANTED = """
from pathlib import Path
Path({marker!r}).touch()

def touch(*args, **kwargs):
    Path({marker!r}).touch()

class Net:
    def __init__(self, *args, **kwargs):
        Path({marker!r}).touch()
"""


def _spawn(marker: Path) -> dict:
    return {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", str(marker)]}}


# Each route: the hyperparameters it changes, given the marker path.
ROUTES = {
    "class spec nested in an untyped argument": lambda marker: {
        "network": {
            "class_path": "torch.nn.Linear",
            "init_args": {"in_features": 1, "out_features": 1, "device": _spawn(marker)},
        }
    },
    "class spec nested in a trusted network's argument": lambda marker: {
        "network": {"class_path": "binclf.networks.MLP", "init_args": {"hidden_sizes": _spawn(marker)}}
    },
    "class spec nested in a scheduler's argument": lambda marker: {
        "lr_scheduler": {
            "class_path": "torch.optim.lr_scheduler.LambdaLR",
            "init_args": {"lr_lambda": _spawn(marker)},
        }
    },
    "dotted function name for a callable argument": lambda marker: {
        "lr_scheduler": {
            "class_path": "torch.optim.lr_scheduler.LambdaLR",
            "init_args": {"lr_lambda": "planted.touch"},
        }
    },
    "dotted function name as a setting": lambda marker: {"optimizer": "planted.touch"},
    "class path that imports any module": lambda marker: {
        "network": {"class_path": "planted.Net", "init_args": {}}
    },
    "process-spawning class named directly": lambda marker: {"network": _spawn(marker)},
    "setting the model does not have": lambda marker: {"payload": _spawn(marker)},
    "Lightning's key for the model's own class": lambda marker: {"_class_path": "planted.Net"},
}


def _craft(fitted: Path, where: Path, route: str) -> tuple[Path, Path]:
    """A copy of a real checkpoint whose hyperparameters take ``route``; and the marker it aims at."""
    marker = where / "code_ran"
    (where / "planted.py").write_text(PLANTED.format(marker=str(marker)))
    checkpoint = torch.load(fitted, weights_only=True)
    hyperparameters = copy.deepcopy(checkpoint["hyper_parameters"])
    hyperparameters.update(ROUTES[route](marker))
    checkpoint["hyper_parameters"] = hyperparameters
    torch.save(checkpoint, where / "crafted.ckpt")
    return where / "crafted.ckpt", marker


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m binclf` puts the working directory first
    return tmp_path


def _refused(capsys, exit_, checkpoint: str) -> str:
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"binclf: error: refused checkpoint {checkpoint}: hyper_parameters.")
    return last


@pytest.mark.parametrize("subcommand", ["test", "validate", "predict", "fit"])
@pytest.mark.parametrize("route", ROUTES)
def test_a_crafted_checkpoint_is_refused_before_anything_it_names_runs(
    route, subcommand, fitted, in_tmp, capsys
):
    checkpoint, marker = _craft(fitted, in_tmp, route)
    with pytest.raises(SystemExit) as exit_:
        cli_main([subcommand, "-c", str(DEFAULT_CONFIG), *SMALL, "--ckpt_path", checkpoint.name])
    _refused(capsys, exit_, checkpoint.name)
    assert not marker.exists()
    assert "planted" not in sys.modules
    assert not (in_tmp / "lightning_logs").exists()


def test_a_crafted_file_planted_in_a_run_folder_is_refused_by_the_plain_lookup(fitted, in_tmp, capsys):
    checkpoint, marker = _craft(fitted, in_tmp, "class path that imports any module")
    folder = in_tmp / "lightning_logs" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    planted = folder / "epoch=9-step=99-val_loss=0.0001.ckpt"
    checkpoint.rename(planted)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["test", "-c", str(DEFAULT_CONFIG), *SMALL])  # no --ckpt_path: the newest run's best
    assert "planted.Net" in _refused(capsys, exit_, str(planted.relative_to(in_tmp)))
    assert not marker.exists()


def test_python_m_binclf_does_not_import_a_module_of_the_working_directory(fitted, tmp_path):
    checkpoint, marker = _craft(fitted, tmp_path, "class path that imports any module")
    command = [sys.executable, "-m", "binclf", "test", "-c", str(DEFAULT_CONFIG), *SMALL]
    result = subprocess.run(
        [*command, "--ckpt_path", checkpoint.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("binclf: error: refused checkpoint crafted.ckpt")
    assert not marker.exists()


def test_a_class_the_user_names_is_trusted_for_that_command_only(in_tmp, capsys):
    # tests/faults.py stands for the user's own package.
    own = ["--model.network=faults.TinyNet"]
    cli_main(["fit", "-c", str(DEFAULT_CONFIG), *SMALL, "--trainer.max_epochs=1", *own])
    capsys.readouterr()
    cli_main(["test", "-c", str(DEFAULT_CONFIG), *SMALL, *own])
    assert "Test summary" in capsys.readouterr().out
    # Without naming it, the same checkpoint names a class this command was not told about.
    with pytest.raises(SystemExit) as exit_:
        cli_main(["test", "-c", str(DEFAULT_CONFIG), *SMALL])
    checkpoint = next((in_tmp / "lightning_logs" / "version_0" / "checkpoints").glob("epoch=*.ckpt"))
    assert "'faults.TinyNet'" in _refused(capsys, exit_, str(checkpoint.relative_to(in_tmp)))


def test_jsonargparse_refuses_code_even_in_the_users_own_config(in_tmp, capsys):
    """The second layer: jsonargparse's import denylist, enforced, guards every value it parses."""
    marker = in_tmp / "code_ran"
    (in_tmp / "nested.yaml").write_text(
        "model:\n  lr_scheduler:\n    class_path: torch.optim.lr_scheduler.LambdaLR\n    init_args:\n"
        "      lr_lambda: os.system\n"
    )
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "-c", str(DEFAULT_CONFIG), "-c", "nested.yaml", *SMALL])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Importing 'os.system' is not allowed" in err
    assert not marker.exists()
    assert not (in_tmp / "lightning_logs").exists()


def test_what_a_real_fit_saves_passes_the_check(fitted, in_tmp, capsys):
    for subcommand in ("test", "validate", "predict"):
        cli_main([subcommand, "-c", str(DEFAULT_CONFIG), *SMALL, "--ckpt_path", str(fitted)])
    assert "error" not in capsys.readouterr().err
    assert os.listdir(in_tmp / "lightning_logs")
