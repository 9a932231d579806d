"""A checkpoint may come from anyone: reading one never imports, builds or calls what it names.

Each route by which a plain-data checkpoint used to run code gets a crafted file here, aimed at a marker
file; the marker must never appear, and the command must end with one line and a non-zero status.
"""

from __future__ import annotations

import builtins
import copy
import importlib
import json
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonargparse
import pytest
import torch
import yaml
from helpers import DEFAULT_CONFIG, SMALL

from binclf import cli, runs
from binclf.checkpoint import CheckpointError, build_model, checked_model_settings, load_checkpoint
from binclf.main import cli_main
from binclf.module import BinaryClassifier
from binclf.networks import MLP

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


def _mlp(**init_args) -> dict:
    return {"class_path": "binclf.networks.MLP", "init_args": {"input_dim": 1, **init_args}}


def _sgd(**init_args) -> dict:
    return {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, **init_args}}


def _lambda_lr(lr_lambda) -> dict:
    return {"class_path": "torch.optim.lr_scheduler.LambdaLR", "init_args": {"lr_lambda": lr_lambda}}


def _as_json(spec: dict) -> str:
    return json.dumps(spec)


def _as_yaml(spec: dict) -> str:
    return yaml.safe_dump(spec)


PLANTED_NET = {"class_path": "planted.Net", "init_args": {}}

# Each route: (the hyperparameters it changes, given the marker path; the key the refusal must name). They
# cover every kind of route by which a config parser would turn a checkpoint's plain data into code: class
# specs written as JSON or YAML strings, bare names, dotted callables, nested specs, modules planted in the
# working folder, and values no constructor takes.
ROUTES = {
    # A whole class spec, as a string.
    "network spec as a JSON string": (lambda m: {"network": _as_json(PLANTED_NET)}, "network"),
    "network spec as a YAML string": (lambda m: {"network": _as_yaml(PLANTED_NET)}, "network"),
    "spawning spec as a JSON string": (lambda m: {"network": _as_json(_spawn(m))}, "network"),
    "optimizer spec as a JSON string": (
        lambda m: {"optimizer": _as_json({"class_path": "planted.touch"})},
        "optimizer",
    ),
    "scheduler spec as a YAML string": (lambda m: {"lr_scheduler": _as_yaml(_spawn(m))}, "lr_scheduler"),
    "spec as a JSON string inside a network's arguments": (
        lambda m: {"network": _mlp(hidden_sizes=_as_json(PLANTED_NET))},
        "network.init_args.hidden_sizes",
    ),
    "spec as a YAML string inside an optimizer's arguments": (
        lambda m: {"optimizer": _sgd(lr=_as_yaml(_spawn(m)))},
        "optimizer.init_args.lr",
    ),
    "YAML python tag as a string": (
        lambda m: {"network": f"!!python/object/apply:os.system ['touch {m}']"},
        "network",
    ),
    "calibration as a JSON spec": (lambda m: {"calibration": _as_json(PLANTED_NET)}, "calibration"),
    # Bare names, which a parser would resolve by searching subclasses.
    "bare class name as the network": (lambda m: {"network": "Identity"}, "network"),
    "bare class name as class_path": (
        lambda m: {"network": {"class_path": "Identity"}},
        "network.class_path",
    ),
    "bare planted class name": (lambda m: {"network": {"class_path": "Net"}}, "network.class_path"),
    "bare scheduler name that takes a function": (
        lambda m: {"lr_scheduler": {"class_path": "LambdaLR", "init_args": {"lr_lambda": "print"}}},
        "lr_scheduler.class_path",
    ),
    # Dotted names of functions, which a parser would import and call.
    "dotted function as the optimizer": (lambda m: {"optimizer": "planted.touch"}, "optimizer"),
    "builtins.print as the scheduler": (lambda m: {"lr_scheduler": "builtins.print"}, "lr_scheduler"),
    "dotted function as a scheduler's function": (
        lambda m: {"lr_scheduler": _lambda_lr("planted.touch")},
        "lr_scheduler.class_path",
    ),
    "builtins.print as a scheduler's function": (
        lambda m: {"lr_scheduler": _lambda_lr("builtins.print")},
        "lr_scheduler.class_path",
    ),
    "dotted function as a learning rate": (
        lambda m: {"optimizer": _sgd(lr="planted.touch")},
        "optimizer.init_args.lr",
    ),
    "dotted functions as hidden sizes": (
        lambda m: {"network": _mlp(hidden_sizes=["planted.touch"])},
        "network.init_args.hidden_sizes",
    ),
    "dotted function as the calibration": (lambda m: {"calibration": "planted.touch"}, "calibration"),
    "dotted function as LightningCLI's instantiator": (
        lambda m: {"_instantiator": "planted.touch"},
        "_instantiator",
    ),
    # Class specs nested inside other classes' arguments.
    "spec nested in an untyped argument": (
        lambda m: {
            "network": {
                "class_path": "torch.nn.Linear",
                "init_args": {"in_features": 1, "out_features": 1, "device": _spawn(m)},
            }
        },
        "network.class_path",
    ),
    "spec nested in a trusted network's argument": (
        lambda m: {"network": _mlp(hidden_sizes=_spawn(m))},
        "network.init_args.hidden_sizes",
    ),
    "spec nested in an optimizer's flag": (
        lambda m: {"optimizer": _sgd(foreach=_spawn(m))},
        "optimizer.init_args.foreach",
    ),
    "spec nested in a scheduler's argument": (
        lambda m: {"lr_scheduler": _lambda_lr(_spawn(m))},
        "lr_scheduler.class_path",
    ),
    "spec in a network's dict_kwargs": (
        lambda m: {"network": {**_mlp(), "dict_kwargs": {"extra": _spawn(m)}}},
        "network.dict_kwargs",
    ),
    "process-spawning class named directly": (lambda m: {"network": _spawn(m)}, "network.class_path"),
    "container class that builds what it is given": (
        lambda m: {"network": {"class_path": "torch.nn.Sequential", "init_args": {"args": [_spawn(m)]}}},
        "network.class_path",
    ),
    # Modules planted in the working folder, where `python -m` looks first.
    "planted class as the network": (lambda m: {"network": PLANTED_NET}, "network.class_path"),
    "planted class as the optimizer": (
        lambda m: {"optimizer": {"class_path": "planted.Net", "init_args": {}}},
        "optimizer.class_path",
    ),
    "planted class as Lightning's model class": (lambda m: {"_class_path": "planted.Net"}, "_class_path"),
    "planted class under a setting the model lacks": (lambda m: {"payload": PLANTED_NET}, "payload"),
    # Values no constructor takes.
    "setting the network lacks": (
        lambda m: {"network": _mlp(activation="relu")},
        "network.init_args.activation",
    ),
    "calibration that is not one of its choices": (lambda m: {"calibration": "sigmoid"}, "calibration"),
    "learning rate that is not finite": (
        lambda m: {"optimizer": _sgd(lr=float("nan"))},
        "optimizer.init_args.lr",
    ),
    "boolean for a hidden size": (
        lambda m: {"network": _mlp(hidden_sizes=[True])},
        "network.init_args.hidden_sizes",
    ),
    "negative learning rate": (lambda m: {"optimizer": _sgd(lr=-1.0)}, "optimizer.init_args"),
    "network that would take terabytes": (
        lambda m: {"network": _mlp(hidden_sizes=[1_000_000, 1_000_000])},
        "network.init_args",
    ),
}


def _craft(fitted: Path, where: Path, route: str) -> tuple[Path, Path]:
    """A copy of a real checkpoint whose hyperparameters take ``route``; and the marker it aims at."""
    marker = where / "code_ran"
    (where / "planted.py").write_text(PLANTED.format(marker=str(marker)))
    checkpoint = torch.load(fitted, weights_only=True)
    hyperparameters = copy.deepcopy(checkpoint["hyper_parameters"])
    hyperparameters.update(ROUTES[route][0](marker))
    checkpoint["hyper_parameters"] = hyperparameters
    torch.save(checkpoint, where / "crafted.ckpt")
    return where / "crafted.ckpt", marker


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m binclf` puts the working directory first
    return tmp_path


def _refused(capsys, exit_, checkpoint: str, key: str = "") -> str:
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"binclf: error: refused checkpoint {checkpoint}: hyper_parameters.{key}")
    return last


def _assert_untouched(marker: Path, where: Path) -> None:
    assert not marker.exists()
    assert "planted" not in sys.modules
    assert not (where / "lightning_logs").exists()


@pytest.mark.parametrize("route", ROUTES)
def test_a_crafted_checkpoint_is_refused_naming_the_file_and_key(route, fitted, in_tmp, capsys):
    checkpoint, marker = _craft(fitted, in_tmp, route)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["test", "-c", str(DEFAULT_CONFIG), *SMALL, "--ckpt_path", checkpoint.name])
    _refused(capsys, exit_, checkpoint.name, ROUTES[route][1])
    _assert_untouched(marker, in_tmp)


@pytest.mark.parametrize("subcommand", ["validate", "predict", "fit"])
@pytest.mark.parametrize(
    "route",
    ["network spec as a JSON string", "builtins.print as the scheduler", "planted class as the network"],
)
def test_every_subcommand_refuses_a_crafted_checkpoint(route, subcommand, fitted, in_tmp, capsys):
    checkpoint, marker = _craft(fitted, in_tmp, route)
    with pytest.raises(SystemExit) as exit_:
        cli_main([subcommand, "-c", str(DEFAULT_CONFIG), *SMALL, "--ckpt_path", checkpoint.name])
    _refused(capsys, exit_, checkpoint.name, ROUTES[route][1])
    _assert_untouched(marker, in_tmp)


class ImportRecorder:
    """Records every import asked for (``import`` statements and ``importlib.import_module``) of a module
    that is not loaded yet, and every module that appears in ``sys.modules``, while it is active."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.asked: list[str] = []
        self._monkeypatch = monkeypatch

    def __enter__(self) -> ImportRecorder:
        self.before = set(sys.modules)
        real_import, real_import_module = builtins.__import__, importlib.import_module

        def recording_import(name, *args, **kwargs):
            if name not in sys.modules:
                self.asked.append(name)
            return real_import(name, *args, **kwargs)

        def recording_import_module(name, *args, **kwargs):
            if name not in sys.modules:
                self.asked.append(name)
            return real_import_module(name, *args, **kwargs)

        self._monkeypatch.setattr(builtins, "__import__", recording_import)
        self._monkeypatch.setattr(importlib, "import_module", recording_import_module)
        return self

    def __exit__(self, *exc_info) -> None:
        self._monkeypatch.undo()
        self.new = set(sys.modules) - self.before


def _read_check_and_build(path: Path) -> BinaryClassifier:
    """What ``binclf test --ckpt_path`` does with a checkpoint: read it, check it, build its model."""
    contents = load_checkpoint(path)
    settings = checked_model_settings(contents["hyper_parameters"], path, BinaryClassifier, None)
    defaults = {"network": MLP(), "calibration": "none"}
    return build_model(settings, contents["state_dict"], BinaryClassifier, defaults, path)


def test_reading_a_checkpoint_imports_nothing_and_calls_nothing_it_names(fitted, in_tmp, monkeypatch):
    _read_check_and_build(fitted)  # once, so that what torch loads lazily on first use is loaded
    for route, (_, key) in ROUTES.items():
        checkpoint, marker = _craft(fitted, in_tmp, route)
        with ImportRecorder(monkeypatch) as recorder, pytest.raises(CheckpointError) as refusal:
            _read_check_and_build(checkpoint)
        assert f"refused checkpoint {checkpoint}: hyper_parameters.{key}" in str(refusal.value), route
        assert recorder.asked == [], route
        assert recorder.new == set(), route
        assert not marker.exists(), route
    # The model a real fit saved is built, and building it imports nothing either.
    with ImportRecorder(monkeypatch) as recorder:
        model = _read_check_and_build(fitted)
    assert (recorder.asked, recorder.new) == ([], set())
    assert isinstance(model.network, MLP)
    # The recorder sees imports when there are some, so its silence above means something.
    with ImportRecorder(monkeypatch) as recorder:
        importlib.import_module("wave")
    assert recorder.asked == ["wave"]


def _jsonargparse_calls(function, *args):
    """Run ``function(*args)``, returning its result and the jsonargparse functions called meanwhile."""
    package = str(Path(jsonargparse.__file__).parent)
    calls = []

    def profiler(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(package):
            calls.append(frame.f_code.co_name)

    sys.setprofile(profiler)
    try:
        result = function(*args)
    finally:
        sys.setprofile(None)
    return result, calls


def test_no_jsonargparse_call_while_the_checkpoint_is_applied(fitted, in_tmp, monkeypatch, capsys):
    # The profiler catches jsonargparse when it is called: the check below can fail.
    _, calls = _jsonargparse_calls(jsonargparse.ArgumentParser)
    assert calls
    # binclf test, with the checkpoint steps recorded as the command calls them.
    recorded = {}
    steps = {
        runs: ["load_checkpoint", "checked_model_settings", "checked_data_settings"],
        cli: ["evaluated_model", "restore_data_state"],
    }
    for module, names in steps.items():
        for name in names:
            real = getattr(module, name)

            def watched(*args, real=real, name=name, **kwargs):
                result, calls = _jsonargparse_calls(lambda: real(*args, **kwargs))
                recorded.setdefault(name, []).extend(calls)
                return result

            monkeypatch.setattr(module, name, watched)
    cli_main(["test", "-c", str(DEFAULT_CONFIG), *SMALL, "--ckpt_path", str(fitted)])
    assert "Test summary" in capsys.readouterr().out
    assert recorded == {name: [] for names in steps.values() for name in names}


def test_a_crafted_file_planted_in_a_run_folder_is_refused_by_the_plain_lookup(fitted, in_tmp, capsys):
    checkpoint, marker = _craft(fitted, in_tmp, "planted class as the network")
    folder = in_tmp / "lightning_logs" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    planted = folder / "epoch=9-step=99-val_loss=0.0001.ckpt"
    checkpoint.rename(planted)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["test", "-c", str(DEFAULT_CONFIG), *SMALL])  # no --ckpt_path: the newest run's best
    assert "planted.Net" in _refused(capsys, exit_, str(planted.relative_to(in_tmp)))
    assert not marker.exists()


@pytest.mark.parametrize("route", ["network spec as a YAML string", "builtins.print as the scheduler"])
def test_a_crafted_last_ckpt_planted_in_a_run_is_refused_on_resume(route, fitted, in_tmp, capsys):
    checkpoint, marker = _craft(fitted, in_tmp, route)
    folder = in_tmp / "lightning_logs" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    checkpoint.rename(folder / "last.ckpt")
    for command in (["fit", "--ckpt_path", "last"], ["test", "--ckpt_path", "last"], ["predict"]):
        with pytest.raises(SystemExit) as exit_:
            cli_main([command[0], "-c", str(DEFAULT_CONFIG), *SMALL, *command[1:]])
        _refused(capsys, exit_, "lightning_logs/version_0/checkpoints/last.ckpt", ROUTES[route][1])
        assert not marker.exists()
        assert "planted" not in sys.modules


@pytest.mark.slow
def test_python_m_binclf_does_not_import_a_module_of_the_working_directory(fitted, tmp_path):
    checkpoint, marker = _craft(fitted, tmp_path, "planted class as the network")
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
    # Named by the config, the class comes from the config: the checkpoint gives only plain values for it.
    contents = torch.load(checkpoint, weights_only=True)
    contents["hyper_parameters"]["network"]["init_args"]["input_dim"] = _as_json(PLANTED_NET)
    torch.save(contents, in_tmp / "crafted.ckpt")
    with pytest.raises(SystemExit) as exit_:
        cli_main(["test", "-c", str(DEFAULT_CONFIG), *SMALL, *own, "--ckpt_path", "crafted.ckpt"])
    _refused(capsys, exit_, "crafted.ckpt", "network.init_args.input_dim")


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


def test_lightningclis_own_checkpoint_parsing_never_sees_the_checkpoint(fitted, in_tmp, capsys):
    """Plain LightningCLI reads a ``ckpt_path``'s hyperparameters into its parser, as config; binclf parses
    each command's settings alone, and the checkpoint's model settings never reach the parsed config."""
    contents = torch.load(fitted, weights_only=True)
    contents["hyper_parameters"]["network"]["init_args"]["hidden_sizes"] = [64, 64]  # as trained: it fits
    contents["hyper_parameters"]["optimizer"]["init_args"]["lr"] = 0.123
    torch.save(contents, in_tmp / "other.ckpt")
    test = cli.run_command(["test", "-c", str(DEFAULT_CONFIG), *SMALL, "--ckpt_path", "other.ckpt"])
    assert test.config.model.optimizer.init_args.lr == 0.1  # the command line's, as parsed
    assert test.model.optimizer.keywords["lr"] == 0.123  # the checkpoint's, checked and built in Python


def test_a_checkpoint_that_would_unpack_to_more_than_memory_allows_is_refused_before_it_is_unpacked(
    fitted, in_tmp, monkeypatch, capsys
):
    """A small file, deflated, holding 300 MB of zeros: its size once unpacked is read from the archive's
    directory, and refused against the memory allowed, before any of it is unpacked."""
    path = in_tmp / "deflated.ckpt"
    path.write_bytes(fitted.read_bytes())
    with (
        zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("archive/data/zeros", "w", force_zip64=True) as entry,
    ):
        for _ in range(300):
            entry.write(bytes(1_000_000))
    assert path.stat().st_size < 2_000_000
    monkeypatch.setenv("BINCLF_MEMORY_LIMIT_GB", "0.1")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SystemExit) as exit_:
        cli_main(["test", "-c", str(DEFAULT_CONFIG), *SMALL, "--ckpt_path", str(path)])
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    assert exit_.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"binclf: error: checkpoint {path} would hold 300.")
    assert "of tensors once unpacked in memory, more than BINCLF_MEMORY_LIMIT_GB allows (100.0 MB)" in line
    assert grew < 100_000_000  # the 300 MB were never unpacked
