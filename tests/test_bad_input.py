"""Every way a user can hand binclf bad input ends the same way: one line that names the problem, a non-zero
exit status, no traceback, and no run folder that could pass for a finished run."""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DEFAULT_CONFIG, SMALL

from binclf.main import cli_main


def _truncated(fitted: Path, where: Path) -> str:
    data = fitted.read_bytes()
    (where / "truncated.ckpt").write_bytes(data[: len(data) // 2])  # as a kill mid-write would leave it
    return str(where / "truncated.ckpt")


def _corrupted(fitted: Path, where: Path) -> str:
    (where / "corrupted.ckpt").write_bytes(os.urandom(4096))
    return str(where / "corrupted.ckpt")


def _other_architecture(fitted: Path, where: Path) -> str:
    checkpoint = torch.load(fitted, weights_only=True)
    # The same layers, 8 wide where the weights are 64: names match, shapes do not.
    network = checkpoint["hyper_parameters"]["network"]["init_args"]
    network["hidden_sizes"] = [8] * len(network["hidden_sizes"])
    torch.save(checkpoint, where / "other.ckpt")
    return str(where / "other.ckpt")


def _config_with_unknown_key(fitted: Path, where: Path) -> str:
    (where / "typo.yaml").write_text("data:\n  num_sampels: 100\n")
    return str(where / "typo.yaml")


def _file_in_the_way(fitted: Path, where: Path) -> str:
    (where / "not_a_folder").write_text("")
    return str(where / "not_a_folder" / "logs")


def _changed_checkpoint(change: Callable[[dict], object]) -> Callable[[Path, Path], str]:
    """A copy of the fitted checkpoint, changed by ``change`` (which edits it in place or returns another
    object to save instead)."""

    def build(fitted: Path, where: Path) -> str:
        checkpoint = torch.load(fitted, weights_only=True)
        checkpoint = change(checkpoint) or checkpoint
        torch.save(checkpoint, where / "changed.ckpt")
        return str(where / "changed.ckpt")

    return build


def _nan_weights(checkpoint: dict) -> None:
    checkpoint["state_dict"]["network.layers.0.weight"].fill_(float("nan"))


def _model_checkpoint_state(checkpoint: dict) -> dict:
    return next(
        v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint{'monitor': 'loss/val'")
    )


def _set_buffers(scale: float, shift: float, calibration: str | None = None) -> Callable[[dict], None]:
    def change(checkpoint: dict) -> None:
        checkpoint["state_dict"]["logit_scale"].fill_(scale)
        checkpoint["state_dict"]["logit_shift"].fill_(shift)
        if calibration is not None:
            checkpoint["hyper_parameters"]["calibration"] = calibration

    return change


def _overflowing_weights(checkpoint: dict) -> None:
    """Finite weights whose logits overflow to infinity on every input."""
    for name, tensor in checkpoint["state_dict"].items():
        if name.startswith("network.") and name.endswith("weight"):
            tensor.fill_(1e30)


def _without_data_state(checkpoint: dict) -> None:
    del checkpoint["TwoGaussianDataModule"]


def _weights_only(fitted: Path, where: Path) -> str:
    """What ``torch.save(model.state_dict(), ...)`` writes: weights, without Lightning's layout."""
    torch.save(torch.load(fitted, weights_only=True)["state_dict"], where / "weights.pt")
    return str(where / "weights.pt")


def _saved_test_config(fitted: Path, where: Path) -> str:
    """A config written for ``binclf test``: it holds ``verbose``, which only validate and test take."""
    (where / "config.test-1.yaml").write_text("verbose: false\nckpt_path: null\n")
    return str(where / "config.test-1.yaml")


def _alias_bomb(fitted: Path, where: Path) -> str:
    levels = "".join(f"l{i + 1}: &l{i + 1} [{', '.join([f'*l{i}'] * 10)}]\n" for i in range(6))
    (where / "bomb.yaml").write_text(f"l0: &l0 [x]\n{levels}")
    return str(where / "bomb.yaml")


def _deep_config(fitted: Path, where: Path) -> str:
    (where / "deep.yaml").write_text("data:\n  scale: " + "[" * 100 + "1" + "]" * 100 + "\n")
    return str(where / "deep.yaml")


def _huge_config(fitted: Path, where: Path) -> str:
    (where / "huge.yaml").write_text("# " + "x" * 1_100_000 + "\n")
    return str(where / "huge.yaml")


def _optimizer_lr(value: float) -> Callable[[dict], None]:
    def change(checkpoint: dict) -> None:
        checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] = value

    return change


def _tensor(name: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], None]:
    def change(checkpoint: dict) -> None:
        checkpoint["state_dict"][name] = make(checkpoint["state_dict"][name])

    return change


def _hyperparameter(value: object, *keys: str) -> Callable[[dict], None]:
    def change(checkpoint: dict) -> None:
        place = checkpoint["hyper_parameters"]
        for key in keys[:-1]:
            place = place[key]
        place[keys[-1]] = value

    return change


def _empty_loops(checkpoint: dict) -> None:
    checkpoint["loops"] = {name: {} for name in checkpoint["loops"]}


def _weights_of_lightning(checkpoint: dict) -> None:
    """What ``Trainer.save_checkpoint(weights_only=True)`` writes: Lightning's layout, no training state."""
    for key in ("optimizer_states", "lr_schedulers", "loops", "callbacks"):
        checkpoint.pop(key, None)


def _callback_named_by_a_number(checkpoint: dict) -> None:
    checkpoint["callbacks"][1] = checkpoint["callbacks"].pop(next(iter(checkpoint["callbacks"])))


def _config(text: str) -> Callable[[Path, Path], str]:
    def build(fitted: Path, where: Path) -> str:
        (where / "c.yaml").write_text(text)
        return str(where / "c.yaml")

    return build


def _fifo(name: str) -> Callable[[Path, Path], str]:
    def build(fitted: Path, where: Path) -> str:
        os.mkfifo(where / name)
        return str(where / name)

    return build


def _folder(fitted: Path, where: Path) -> str:
    (where / "a_folder.ckpt").mkdir()
    return str(where / "a_folder.ckpt")


ROWS = "".join(f"{i * 0.1:.1f},{i % 7},{'yes' if i % 2 else 'no'}\n" for i in range(40))  # lines 2 to 41


def _table(name: str, content: bytes | Callable[[Path], object]) -> Callable[[Path, Path], str]:
    """A data file of the given bytes, or written by ``content(path)``."""

    def build(fitted: Path, where: Path) -> str:
        path = where / name
        path.write_bytes(content) if isinstance(content, bytes) else content(path)
        return str(path)

    return build


def _yaml(text: str) -> Callable[[Path, Path], str]:
    return _table("data.yaml", text.encode())


TABLE = ["--data=binclf.data.TabularDataModule", "--data.path"]
CSV = _table("t.csv", f"x1,x2,label\n{ROWS}".encode())
GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU, so the setting is valid")

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
        ["--data=binclf.data.TabularDataModule", "--data.path=absent.csv"],
        "absent.csv",
    ),
    "unknown setting": ("fit", ["--data.num_sampels=100"], "num_sampels"),
    "unknown key in a config file": ("fit", ["-c", _config_with_unknown_key], "num_sampels"),
    "wrong type": ("fit", ["--data.num_samples=many"], "num_samples"),
    "missing config file": ("fit", ["-c", "absent.yaml"], "absent.yaml"),
    "config file that is not YAML": (
        "fit",
        ["-c", str(DEFAULT_CONFIG), "-c", _yaml("data:\n  scale: [0.2\n  seed: 1\n")],
        "data.yaml, line 3, column 7: not valid YAML",
    ),
    "missing checkpoint": ("test", ["--ckpt_path=absent.ckpt"], "absent.ckpt"),
    "truncated checkpoint": ("test", ["--ckpt_path", _truncated], "truncated.ckpt is incomplete"),
    "corrupted checkpoint": ("test", ["--ckpt_path", _corrupted], "corrupted.ckpt"),
    # Refused on the meta device, before a network of the checkpoint's settings takes any memory.
    "checkpoint of another architecture": (
        "test",
        ["--ckpt_path", _other_architecture],
        "hyper_parameters.network.init_args describe a MLP that does not fit the checkpoint's weights (first "
        "difference: layers.0.bias)",
    ),
    "checkpoint for data of another dimension": (
        "test",
        ["--data.dim=3", "--ckpt_path", None],
        "the checkpoint was trained on 1-dimensional data, but data.dim is 3",
    ),
    "resume from a truncated checkpoint": ("fit", ["--ckpt_path", _truncated], "is incomplete"),
    "test with no fit": ("test", [], "no checkpoint found"),
    "validate with no fit": ("validate", [], "no checkpoint found"),
    "predict with no fit": ("predict", [], "no checkpoint found"),
    "unwritable log folder": ("fit", ["--trainer.default_root_dir", _file_in_the_way], "not_a_folder"),
    # Checkpoints that are not what Lightning writes.
    "checkpoint that is a list": ("test", ["--ckpt_path", _changed_checkpoint(lambda c: [1, 2])], "a list"),
    "checkpoint with list-valued hyperparameters": (
        "test",
        ["--ckpt_path", _changed_checkpoint(lambda c: c.update(hyper_parameters=[1]))],
        "hyper_parameters is a list",
    ),
    "checkpoint without Lightning's version key": (
        "test",
        ["--ckpt_path", _changed_checkpoint(lambda c: c.__delitem__("pytorch-lightning_version"))],
        "has no 'pytorch-lightning_version'",
    ),
    "checkpoint with a string where a tensor belongs": (
        "test",
        [
            "--ckpt_path",
            _changed_checkpoint(lambda c: c["state_dict"].update({"network.layers.0.bias": "x"})),
        ],
        "state_dict['network.layers.0.bias'] is a str",
    ),
    "checkpoint whose loops state lacks the test loop": (
        "test",
        ["--ckpt_path", _changed_checkpoint(lambda c: c["loops"].pop("test_loop") and None)],
        "loops lacks one of",
    ),
    "checkpoint of a diverged run": (
        "test",
        ["--ckpt_path", _changed_checkpoint(_nan_weights)],
        "network.layers.0.weight is not finite",
    ),
    "checkpoint whose data state is damaged": (
        "test",
        ["--ckpt_path", _changed_checkpoint(lambda c: c["TwoGaussianDataModule"].update(input_spread=[0.0]))],
        "the checkpoint's data state is damaged: input_spread is [0.0]",
    ),
    # Every number a checkpoint holds is checked before anything uses it.
    "checkpoint from a Lightning before 2.0": (
        "test",
        ["--ckpt_path", _changed_checkpoint(lambda c: c.update({"pytorch-lightning_version": "0.9.0"}))],
        "pytorch-lightning_version is '0.9.0'",
    ),
    "checkpoint whose version key is no version": (
        "test",
        ["--ckpt_path", _changed_checkpoint(lambda c: c.update({"pytorch-lightning_version": "latest; rm"}))],
        "pytorch-lightning_version is 'latest; rm'",
    ),
    "checkpoint at a negative epoch": (
        "test",
        ["--ckpt_path", _changed_checkpoint(lambda c: c.update(epoch=-1))],
        "epoch is -1, not a count",
    ),
    "checkpoint whose step is a string": (
        "test",
        ["--ckpt_path", _changed_checkpoint(lambda c: c.update(global_step="12"))],
        "global_step is '12', not a count",
    ),
    "checkpoint whose step is beyond any run": (
        "fit",
        ["--ckpt_path", _changed_checkpoint(lambda c: c.update(global_step=2**60))],
        "global_step is 1152921504606846976",
    ),
    "checkpoint whose loop progress is a string": (
        "fit",
        [
            "--ckpt_path",
            _changed_checkpoint(
                lambda c: c["loops"]["fit_loop"]["epoch_progress"]["total"].update(ready="2")
            ),
        ],
        "loops.fit_loop.epoch_progress.total.ready is '2', not a count",
    ),
    "checkpoint whose loop progress is negative": (
        "fit",
        [
            "--ckpt_path",
            _changed_checkpoint(
                lambda c: c["loops"]["fit_loop"]["epoch_progress"]["current"].update(ready=-3)
            ),
        ],
        "loops.fit_loop.epoch_progress.current.ready is -3",
    ),
    "checkpoint naming a file outside its folder to delete": (
        "fit",
        [
            "--ckpt_path",
            _changed_checkpoint(
                lambda c: _model_checkpoint_state(c)["best_k_models"].update(
                    {"/etc/hostname": torch.tensor(0.1)}
                )
            ),
        ],
        "best_k_models is '/etc/hostname', not a checkpoint in its own folder",
    ),
    "checkpoint naming a file in a neighbouring folder to delete": (
        "fit",
        [
            "--ckpt_path",
            _changed_checkpoint(
                lambda c: (state := _model_checkpoint_state(c))["best_k_models"].update(
                    {state["dirpath"] + "_old/x.ckpt": torch.tensor(0.1)}
                )
            ),
        ],
        "checkpoints_old/x.ckpt', not a checkpoint in its own folder",
    ),
    "checkpoint whose last path climbs out of its folder": (
        "fit",
        [
            "--ckpt_path",
            _changed_checkpoint(
                lambda c: _model_checkpoint_state(c).update(
                    last_model_path=_model_checkpoint_state(c)["dirpath"] + "/../../x.ckpt"
                )
            ),
        ],
        "last_model_path is",
    ),
    "checkpoint whose best path is a list": (
        "test",
        [
            "--ckpt_path",
            _changed_checkpoint(lambda c: _model_checkpoint_state(c).update(best_model_path=[1])),
        ],
        "best_model_path is not a path",
    ),
    "checkpoint whose best score is NaN": (
        "fit",
        [
            "--ckpt_path",
            _changed_checkpoint(
                lambda c: _model_checkpoint_state(c).update(best_model_score=torch.tensor(float("nan")))
            ),
        ],
        "has a score tensor(nan), not a number",
    ),
    "checkpoint whose optimizer state has a NaN learning rate": (
        "fit",
        [
            "--ckpt_path",
            _changed_checkpoint(
                lambda c: c["optimizer_states"][0]["param_groups"][0].update(lr=float("nan"))
            ),
        ],
        "optimizer_states[0].param_groups[0].lr is NaN",
    ),
    "checkpoint whose scheduler states are not a list": (
        "fit",
        ["--ckpt_path", _changed_checkpoint(lambda c: c.update(lr_schedulers={"a": 1}))],
        "lr_schedulers is not a list of states",
    ),
    "checkpoint whose hparams name is a number": (
        "test",
        ["--ckpt_path", _changed_checkpoint(lambda c: c.update(hparams_name=3))],
        "hparams_name is not a name",
    ),
    "checkpoint whose calibration scale is negative": (
        "test",
        ["--ckpt_path", _changed_checkpoint(_set_buffers(-2.0, 0.0, "temperature"))],
        "calibration is damaged: logit_scale -2.0",
    ),
    "checkpoint without calibration whose scale is not 1": (
        "test",
        ["--ckpt_path", _changed_checkpoint(_set_buffers(2.0, 0.0))],
        "calibration is 'none', but logit_scale is 2.0",
    ),
    "checkpoint with temperature calibration and a shift": (
        "predict",
        ["--ckpt_path", _changed_checkpoint(_set_buffers(2.0, 0.5, "temperature"))],
        "calibration is 'temperature', but logit_scale is 2.0 and logit_shift 0.5",
    ),
    "checkpoint whose calibration shift is infinite": (
        "test",
        ["--ckpt_path", _changed_checkpoint(_set_buffers(1.0, float("inf"), "affine"))],
        "logit_shift inf",
    ),
    "checkpoint whose data spread is 1e20": (
        "test",
        [
            "--ckpt_path",
            _changed_checkpoint(lambda c: c["TwoGaussianDataModule"].update(input_spread=[1e20])),
        ],
        "input_spread is [1e+20]",
    ),
    "checkpoint whose data centre is infinite": (
        "predict",
        [
            "--ckpt_path",
            _changed_checkpoint(lambda c: c["TwoGaussianDataModule"].update(input_centre=[float("inf")])),
        ],
        "input_centre is [inf]",
    ),
    "checkpoint trained on more data than fits anywhere": (
        "test",
        [
            "--ckpt_path",
            _changed_checkpoint(lambda c: c["TwoGaussianDataModule"].update(trained_num_samples=10**15)),
        ],
        "trained_num_samples is 1000000000000000",
    ),
    "checkpoint whose training size is a boolean": (
        "test",
        [
            "--ckpt_path",
            _changed_checkpoint(lambda c: c["TwoGaussianDataModule"].update(trained_num_samples=True)),
        ],
        "trained_num_samples is True",
    ),
    "checkpoint without its data state": (
        "test",
        ["--ckpt_path", _changed_checkpoint(_without_data_state)],
        "has no TwoGaussianDataModule state",
    ),
    "checkpoint whose loss curve holds NaN": (
        "fit",
        [
            "--ckpt_path",
            _changed_checkpoint(
                lambda c: c["callbacks"]["DiagnosticFigures"]["losses"].__setitem__(0, float("nan"))
            ),
        ],
        "DiagnosticFigures state is damaged",
    ),
    "checkpoint whose loss curve and steps differ in length": (
        "fit",
        [
            "--ckpt_path",
            _changed_checkpoint(
                lambda c: c["callbacks"]["DiagnosticFigures"].update(
                    steps=torch.tensor([1, 2, 3, 4, 5, 6, 7])
                )
            ),
        ],
        "DiagnosticFigures state is damaged",
    ),
    # No tidy answer from bad state.
    "test of a model whose logits overflow": (
        "test",
        ["--ckpt_path", _changed_checkpoint(_overflowing_weights)],
        "logit is not finite",
    ),
    "predict with a model whose logits overflow": (
        "predict",
        ["--ckpt_path", _changed_checkpoint(_overflowing_weights)],
        "logit is not finite",
    ),
    "resume with another calibration": (
        "fit",
        ["--ckpt_path", None, "--model.calibration=temperature"],
        "model.calibration: 'none' in the checkpoint, 'temperature' now",
    ),
    "resume with another learning rate": (
        "fit",
        ["--ckpt_path", None, "--model.optimizer.lr=0.5"],
        "model.optimizer.init_args.lr: 0.1 in the checkpoint, 0.5 now",
    ),
    "resume with another network": (
        "fit",
        ["--ckpt_path", None, "--model.network.hidden_sizes=[8]"],
        "model.network.init_args.hidden_sizes: [64, 64] in the checkpoint, [8] now",
    ),
    "resume with another optimizer": (
        "fit",
        ["--ckpt_path", None, "--model.optimizer=Adam"],
        "model.optimizer: SGD in the checkpoint, Adam now",
    ),
    "calibration with validation switched off": (
        "fit",
        ["--model.calibration=temperature", "--trainer.limit_val_batches=0"],
        "trainer.limit_val_batches is 0",
    ),
    # Commands that used to end in a traceback, or in a run that did nothing.
    "weights-only file to resume from": (
        "fit",
        ["--ckpt_path", _weights_only],
        "has no 'pytorch-lightning_version'",
    ),
    "a test config passed to fit": (
        "fit",
        ["-c", _saved_test_config],
        "verbose: binclf fit takes no setting 'verbose'",
    ),
    "max_epochs of 0": ("fit", ["--trainer.max_epochs=0"], "trainer.max_epochs is 0"),
    "max_steps of 0": ("fit", ["--trainer.max_steps=0"], "trainer.max_steps is 0"),
    "empty predictions file name": (
        "predict",
        ["--ckpt_path", None, "--predictions.filename="],
        "predictions.filename",
    ),
    "predictions file in a folder": (
        "predict",
        ["--ckpt_path", None, "--predictions.filename=missing/p.csv"],
        "predictions.filename must be a file name",
    ),
    "a value of the wrong type, one line": (
        "fit",
        ["--data.num_samples=many"],
        "data.num_samples: Expected a <class 'int'>",
    ),
    # Memory and config files, bounded before anything is allocated.
    "training set larger than memory": (
        "fit",
        ["--data.num_samples=10000000000"],
        "data.num_samples=10,000,000,000 with data.dim=1 would hold 160.0 GB of data",
    ),
    "predict grid larger than memory": (
        "fit",
        ["--data.num_predict_points=100000000000"],
        "data.num_predict_points=100,000,000,000",
    ),
    "dimension that multiplies every split past memory": (
        "fit",
        ["--data.dim=10000000"],
        "data.num_samples=1,000 with data.dim=10000000 would hold 80.0 GB of data",
    ),
    "network larger than memory": (
        "fit",
        ["--model.network.hidden_sizes=[100000, 100000]"],
        "model.network (MLP with input_dim=1, hidden_sizes=[100000, 100000]) would hold 160.0 GB of network",
    ),
    "config whose aliases expand to a billion values": (
        "fit",
        ["-c", str(DEFAULT_CONFIG), "-c", _alias_bomb],
        "bomb.yaml, line 6: expands to more than 100,000 values",
    ),
    "config nested 100 deep": (
        "fit",
        ["-c", str(DEFAULT_CONFIG), "-c", _deep_config],
        "nested deeper than 50 levels",
    ),
    "config of more than a megabyte": (
        "fit",
        ["-c", str(DEFAULT_CONFIG), "-c", _huge_config],
        "huge.yaml is 1,100,003 bytes, more than a config file may be",
    ),
    "unknown calibration": ("fit", ["--model.calibration=platt"], "calibration"),
    "resume on other data settings": ("fit", ["--ckpt_path", None, "--data.scale=0.5"], "data.scale: 0.2"),
    # Trainer settings that Lightning takes and then fails on.
    "negative max_epochs": ("fit", ["--trainer.max_epochs=-5"], "max_epochs"),
    "validation every 0 epochs": ("fit", ["--trainer.check_val_every_n_epoch=0"], "check_val_every_n_epoch"),
    "zero devices": ("fit", ["--trainer.devices=0"], "devices"),
    "monitored metric that is never logged": ("fit", ["--checkpoint.monitor=val/accuracy"], "val/accuracy"),
    "GPU without a GPU": ("fit", ["--trainer.accelerator=gpu"], "accelerator"),
    # Numbers a checkpoint gives that training or a test would take on trust.
    "optimizer state with a learning rate of -1, to resume": (
        "fit",
        ["--ckpt_path", _changed_checkpoint(_optimizer_lr(-1.0)), "--trainer.max_epochs=2"],
        "optimizer_states[0].param_groups[0].lr is -1.0, but hyper_parameters.optimizer.init_args.lr is 0.1",
    ),
    "optimizer state with an infinite learning rate, to resume": (
        "fit",
        ["--ckpt_path", _changed_checkpoint(_optimizer_lr(float("inf"))), "--trainer.max_epochs=2"],
        "optimizer_states[0].param_groups[0].lr is inf, but",
    ),
    "calibration scale of 1e-45 on a temperature run": (
        "test",
        ["--ckpt_path", _changed_checkpoint(_set_buffers(1e-45, 0.0, "temperature"))],
        "calibration is damaged: logit_scale 1.401298464324817e-45",
    ),
    "data spread at the old lower bound": (
        "test",
        [
            "--ckpt_path",
            _changed_checkpoint(lambda c: c["TwoGaussianDataModule"].update(input_spread=[1e-12])),
        ],
        "input_spread is [1e-12]",
    ),
    "complex weights": (
        "test",
        [
            "--ckpt_path",
            _changed_checkpoint(_tensor("network.layers.0.weight", lambda t: t.to(torch.complex64))),
        ],
        "state_dict.network.layers.0.weight is a tensor (strided, complex64, on cpu), not a dense tensor",
    ),
    "sparse weights": (
        "test",
        ["--ckpt_path", _changed_checkpoint(_tensor("network.layers.0.weight", lambda t: t.to_sparse()))],
        "state_dict.network.layers.0.weight is a tensor (sparse_coo, float32, on cpu), not a dense tensor",
    ),
    "meta-device weights": (
        "test",
        [
            "--ckpt_path",
            _changed_checkpoint(
                _tensor("network.layers.0.weight", lambda t: torch.empty(t.shape, device="meta"))
            ),
        ],
        "state_dict.network.layers.0.weight is a tensor (strided, float32, on meta), not a dense tensor",
    ),
    "a learning rate of 10**400 in a checkpoint": (
        "test",
        ["--ckpt_path", _changed_checkpoint(_hyperparameter(10**400, "optimizer", "init_args", "lr"))],
        "hyper_parameters.optimizer.init_args.lr is 1000000000000000000000000000000000000000000000000000",
    ),
    "empty loops, to resume": (
        "fit",
        ["--ckpt_path", _changed_checkpoint(_empty_loops), "--trainer.max_epochs=2"],
        "holds no progress of its fit loop to go on training from",
    ),
    "Lightning's weights-only checkpoint, to resume": (
        "fit",
        ["--ckpt_path", _changed_checkpoint(_weights_of_lightning), "--trainer.max_epochs=2"],
        "holds no optimizer state to go on training from",
    ),
    "a callback's state under a number": (
        "test",
        ["--ckpt_path", _changed_checkpoint(_callback_named_by_a_number)],
        "callbacks is not a mapping of callbacks by name",
    ),
    "a FIFO as the checkpoint": ("test", ["--ckpt_path", _fifo("pipe.ckpt")], "is a FIFO, not a file"),
    "a folder as the checkpoint": ("test", ["--ckpt_path", _folder], "a_folder.ckpt is a folder, not a file"),
    "the data module's class as the checkpoint's network": (
        "test",
        [
            "--ckpt_path",
            _changed_checkpoint(
                _hyperparameter({"class_path": "binclf.data.TwoGaussianDataModule"}, "network")
            ),
        ],
        "hyper_parameters.network.class_path is 'binclf.data.TwoGaussianDataModule', which is not among",
    ),
    "a callback's class as the checkpoint's network": (
        "test",
        [
            "--ckpt_path",
            _changed_checkpoint(
                _hyperparameter({"class_path": "binclf.monitoring.figures.DiagnosticFigures"}, "network")
            ),
        ],
        "hyper_parameters.network.class_path is 'binclf.monitoring.figures.DiagnosticFigures', which is not",
    ),
    # Configs and settings that Lightning takes, then fails on with a traceback, or trains nothing with.
    "a binary value in a config": (
        "fit",
        ["-c", _config("data:\n  scale: !!binary aGVsbG8=\n")],
        "line 2: a YAML binary value",
    ),
    "a key given twice in a config": (
        "fit",
        ["-c", _config("data:\n  scale: 0.5\n  batch_size: 8\n  scale: 0.9\n")],
        "'scale' is given twice (lines 2 and 4); YAML would keep the second without a word",
    ),
    "a FIFO as a config": ("fit", ["-c", _fifo("pipe.yaml")], "-c: "),
    "validation every 0 steps": (
        "fit",
        ["--trainer.val_check_interval=0"],
        "trainer.val_check_interval must be",
    ),
    "gradients accumulated over 0 batches": (
        "fit",
        ["--trainer.accumulate_grad_batches=0"],
        "trainer.accumulate_grad_batches must be at least 1, got 0",
    ),
    "no training batches": (
        "fit",
        ["--trainer.limit_train_batches=0"],
        "trainer.limit_train_batches must be",
    ),
    "a negative learning rate": (
        "fit",
        ["--model.optimizer.lr=-1"],
        "model.optimizer: Invalid learning rate: -1.0",
    ),
    "a model seed numpy cannot take": (
        "fit",
        ["--seed_everything=1099511627776"],
        "seed_everything must be a whole number from 0 to 2**32 - 1, got 1099511627776",
    ),
    "a data seed numpy cannot take": (
        "fit",
        ["--data.seed=1099511627776"],
        "seed must be a whole number from 0 to 2**32 - 1, got 1099511627776",
    ),
    "a run name of 100,000 characters": (
        "fit",
        ["--run_name=" + "x" * 100_000],
        "is longer than 200 bytes: give one folder name",
    ),
    "a data path of 100,000 characters, cut short in the message": (
        "fit",
        [*TABLE, "x" * 100_000 + ".csv"],
        "... (100,",
    ),
    "a number past float32 in a table": (
        "fit",
        [*TABLE, _table("t.csv", f"x1,x2,label\n1e308,1,yes\n{ROWS}".encode())],
        "t.csv, column 'x1', line 2: 1e308 is beyond what float32, the network's inputs, holds",
    ),
    "a table of 10,001 columns": (
        "fit",
        [*TABLE, _table("t.csv", (",".join(f"c{i}" for i in range(10_000)) + ",label\n").encode())],
        "t.csv: line 1 names 10,001 columns, more than 10,000",
    ),
    # Tables: ambiguous ones are refused by name; unreadable ones name the file and the line.
    "CSV header with a column twice": (
        "fit",
        [*TABLE, _table("t.csv", f"x1,x1,label\n{ROWS}".encode())],
        "t.csv: line 1: column 'x1' appears twice",
    ),
    "label among the feature columns": (
        "fit",
        [*TABLE, CSV, "--data.feature_columns=[x1,label]"],
        "feature_columns includes the label column 'label'",
    ),
    "empty feature_columns": ("fit", [*TABLE, CSV, "--data.feature_columns=[]"], "feature_columns is empty"),
    "complex-valued .npy": (
        "fit",
        [*TABLE, _table("t.npy", lambda p: np.save(p, np.ones((40, 3)) * 1j)), "--data.label_column=2"],
        "t.npy: array '0' is of type complex128",
    ),
    "non-number in a CSV, after blank lines": (
        "fit",
        [*TABLE, _table("t.csv", f"x1,x2,label\n\n{ROWS}\n\noops,1,no\n".encode())],
        "t.csv, column 'x1', line 45: 'oops' is not a number",
    ),
    "latin-1 CSV": (
        "fit",
        [*TABLE, _table("t.csv", f"x1,x2,label\n{ROWS}1,2,caf\xe9\n".encode("latin-1"))],
        "t.csv: line 42 is not UTF-8 text",
    ),
    "gzip-compressed CSV": (
        "fit",
        [*TABLE, _table("t.csv", gzip.compress(f"x1,x2,label\n{ROWS}".encode()))],
        "t.csv: the file is gzip-compressed",
    ),
    "NUL byte in a CSV": (
        "fit",
        [*TABLE, _table("t.csv", f"x1,x2,label\n{ROWS}1\x00,2,no\n".encode())],
        "t.csv: line 42 holds a NUL byte",
    ),
    "CSV field of 200,000 characters": (
        "fit",
        [*TABLE, _table("t.csv", f"x1,x2,label\n{ROWS}{'1' * 200_000},2,no\n".encode())],
        "t.csv: line 42: field larger than field limit",
    ),
    "truncated .npz": (
        "fit",
        [*TABLE, _table("t.npz", b"PK\x03\x04" + bytes(100))],
        "t.npz: cannot read it",
    ),
    "empty .npy": ("fit", [*TABLE, _table("t.npy", b"")], "t.npy: cannot read it"),
    "object arrays in an .npz": (
        "fit",
        [*TABLE, _table("t.npz", lambda p: np.savez(p, x=np.array([1, "a", None], dtype=object)))],
        "t.npz: array 'x' holds Python objects",
    ),
    "label names that YAML turns into booleans matching no label": (
        "fit",
        [
            *TABLE,
            _table("t.csv", f"x1,x2,label\n{ROWS}".replace("yes", "1").replace("no", "0").encode()),
            "--data.label_names=[no, yes]",
        ],
        "data.label_names: YAML reads",
    ),
}
NEEDS_NO_GPU = {"GPU without a GPU"}


@pytest.mark.parametrize(
    ("subcommand", "arguments", "named"),
    [pytest.param(*case, id=name, marks=GPU if name in NEEDS_NO_GPU else ()) for name, case in CASES.items()],
)
def test_bad_input_gets_one_line_naming_it(
    subcommand, arguments, named, fitted, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])
    built = [str(fitted) if a is None else a(fitted, tmp_path) if callable(a) else a for a in arguments]
    config = [] if "-c" in built else ["-c", str(DEFAULT_CONFIG)]
    with pytest.raises(SystemExit) as exit_:
        cli_main([subcommand, *config, *SMALL, *built])
    assert exit_.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("binclf: error:")]
    assert len(lines) == 1, err[-3000:]
    assert len(lines[0]) <= 600  # an error line is for reading
    assert named in lines[0]
    # Nothing that looks like a run: a failed command leaves no version folder behind.
    assert not list(tmp_path.glob("**/version_*"))
