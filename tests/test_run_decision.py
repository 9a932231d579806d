"""What a command runs on, decided once (:func:`binclf.runs.decide`), for the situations a user meets: run
folders and checkpoints made here as Lightning would write them, decided on without starting Lightning."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch

from binclf.checkpoint import CheckpointError
from binclf.cli import given_settings
from binclf.data import TabularDataModule, TwoGaussianDataModule
from binclf.module import BinaryClassifier
from binclf.networks import MLP
from binclf.runs import Request, decide

GAUSSIANS = "binclf.data.TwoGaussianDataModule"
TABLE = "binclf.data.TabularDataModule"
LIGHTNING_CLI = {"_instantiator": "lightning.pytorch.cli.instantiate_module"}


def settings(data_class: type, **given: Any) -> dict[str, Any]:
    """A data class's settings as a parsed config holds them: its defaults, and ``given``."""
    parameters = inspect.signature(data_class).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not p.empty} | given


def save(
    path: Path,
    *,
    data: dict[str, Any],
    data_class: str = GAUSSIANS,
    epochs: int = 2,
    steps: int = 8,
    score: float = 0.69,
    best: Path | None = None,
) -> Path:
    """A checkpoint as ``binclf fit`` writes it: Lightning's layout, the model's and the data's settings as
    LightningCLI saves them, and the best-checkpoint callback's state (``best``: its best file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    progress = {"ready": epochs, "started": epochs, "processed": epochs, "completed": epochs - 1}
    callback = {
        "monitor": "loss/val",
        "dirpath": str(path.parent),
        "best_model_path": str(best or path),
        "current_score": torch.tensor(score),
        "best_k_models": {},
    }
    contents = {
        "pytorch-lightning_version": "2.6.6",
        "epoch": epochs - 1,
        "global_step": steps,
        "state_dict": {},
        "loops": {
            "fit_loop": {"epoch_progress": {"current": progress}},
            "validate_loop": {},
            "test_loop": {},
            "predict_loop": {},
        },
        "hyper_parameters": {
            "network": {
                "class_path": "binclf.networks.MLP",
                "init_args": {"input_dim": 1, "hidden_sizes": [8]},
            },
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}},
            "lr_scheduler": None,
            "calibration": "none",
            **LIGHTNING_CLI,
        },
        "datamodule_hyper_parameters": {"_class_path": data_class, **data, **LIGHTNING_CLI},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
        "callbacks": {"ModelCheckpoint{'monitor': 'loss/val', 'mode': 'min'}": callback},
    }
    torch.save(contents, path)
    return path


def run(folder: Path, **checkpoint: Any) -> Path:
    """A run folder as ``binclf fit`` leaves it: its config, its best checkpoint and its last.ckpt."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("{}\n")
    best = save(folder / "checkpoints" / "epoch=1-step=8-loss_val=0.6900.ckpt", **checkpoint)
    save(folder / "checkpoints" / "last.ckpt", **checkpoint, best=best)
    return folder


def request(command: str, root: Path, data_class: type = TwoGaussianDataModule, **fields: Any) -> Request:
    data = fields.pop("data", settings(data_class))
    return Request(
        command,
        log_root=root,
        data_class=data_class,
        data=data,
        model_class=BinaryClassifier,
        network=("binclf.networks.MLP", MLP),
        max_epochs=fields.pop("max_epochs", 2),
        **fields,
    )


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path / "lightning_logs"


def test_a_fit_without_a_checkpoint_is_a_new_run_of_the_configs_data(logs):
    decision = decide(request("fit", logs, data=settings(TwoGaussianDataModule, scale=0.5)))
    assert (decision.run, decision.checkpoint, decision.data["scale"]) == (None, None, 0.5)
    assert decision.line() == f"fitting a new run under {logs}"


def test_with_no_run_yet_the_answer_says_to_fit_first(logs):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint found under .*: run `binclf fit` first"):
        decide(request("test", logs))


def test_a_run_is_tested_on_the_data_it_was_trained_on(logs):
    run(logs / "version_0", data=settings(TwoGaussianDataModule, scale=0.8))
    decision = decide(request("test", logs))  # the config leaves the scale at its default, 0.2
    assert decision.run == logs / "version_0"
    assert decision.data["scale"] == 0.8
    assert decision.differences == ()
    assert decision.line() == (
        f"testing {logs}/version_0, the latest run of this data: epoch=1-step=8-loss_val=0.6900.ckpt "
        "(loss/val 0.69), on its own data (TwoGaussianDataModule, scale 0.8)"
    )


def test_a_data_setting_the_command_gives_evaluates_on_other_data_and_says_so(logs):
    run(logs / "version_0", data=settings(TwoGaussianDataModule, scale=0.8))
    given = request("test", logs, data=settings(TwoGaussianDataModule), given=frozenset({"scale"}))
    decision = decide(given)
    assert decision.data["scale"] == 0.2
    assert decision.differences == ("scale 0.2, trained on 0.8",)
    assert decision.line().endswith("on other data: scale 0.2, trained on 0.8")


def test_the_latest_run_is_the_latest_of_this_data(logs):
    run(logs / "version_0", data=settings(TwoGaussianDataModule))
    run(logs / "version_1", data=settings(TwoGaussianDataModule, dim=3))  # another shape
    table = settings(TabularDataModule, path="a.csv")
    run(logs / "version_2", data=table, data_class=TABLE)  # another class
    decision = decide(request("validate", logs))
    assert (decision.run, decision.why) == (logs / "version_0", "the latest run of this data")


def test_two_tables_in_one_folder_are_two_projects(logs):
    run(logs / "version_0", data=settings(TabularDataModule, path="a.csv"), data_class=TABLE)
    run(logs / "version_1", data=settings(TabularDataModule, path="b.csv"), data_class=TABLE)
    for name, version in [("a.csv", 0), ("./a.csv", 0), ("b.csv", 1)]:
        asked = request("test", logs, TabularDataModule, data=settings(TabularDataModule, path=name))
        assert decide(asked).run == logs / f"version_{version}", name
    other = request("test", logs, TabularDataModule, data=settings(TabularDataModule, path="c.csv"))
    with pytest.raises(FileNotFoundError) as nothing:
        decide(other)
    message = str(nothing.value)
    assert message.startswith(f"no run under {logs} was trained on this data (TabularDataModule, path c.csv")
    assert f"{logs}/version_1 (path b.csv), {logs}/version_0 (path a.csv)" in message
    assert "pass --ckpt_path FILE" in message


def test_files_and_columns_come_from_the_config_never_from_the_checkpoint(logs):
    trained = settings(TabularDataModule, path="a.csv", predict_path="/etc/passwd", val_fraction=0.3)
    run(logs / "version_0", data=trained, data_class=TABLE)
    configured = settings(TabularDataModule, path="a.csv", predict_path="new.csv")
    decision = decide(request("predict", logs, TabularDataModule, data=configured))
    assert decision.data["predict_path"] == "new.csv"
    assert decision.data["val_fraction"] == 0.3  # a number: the run's own
    assert decision.differences == ("predict_path new.csv, trained on /etc/passwd",)


def test_a_run_name_looks_among_that_names_runs(logs):
    run(logs / "wide" / "version_0", data=settings(TwoGaussianDataModule, scale=0.8))
    run(logs / "version_0", data=settings(TwoGaussianDataModule))
    decision = decide(request("test", logs / "wide", run_name="wide"))
    assert (decision.run, decision.why) == (logs / "wide" / "version_0", "the latest run named wide")


def test_the_config_of_a_run_evaluates_that_run(logs):
    older = run(logs / "version_0", data=settings(TwoGaussianDataModule))
    run(logs / "version_1", data=settings(TwoGaussianDataModule))
    decision = decide(request("test", logs, config_files=[older / "config.yaml"]))
    assert (decision.run, decision.why) == (older, "the run whose config was given")


def test_a_given_checkpoint_outside_the_runs_gets_a_folder_of_its_own(logs, tmp_path):
    path = save(tmp_path / "shared.ckpt", data=settings(TwoGaussianDataModule))
    decision = decide(request("test", logs, ckpt_path=str(path)))
    assert (decision.run, decision.checkpoint, decision.why) == (None, path, "the given checkpoint")
    assert decision.line().startswith(f"testing the given checkpoint, logged in a new run under {logs}: ")


def test_last_takes_the_runs_last_checkpoint(logs):
    run(logs / "version_0", data=settings(TwoGaussianDataModule))
    decision = decide(request("predict", logs, ckpt_path="last"))
    assert decision.checkpoint == logs / "version_0" / "checkpoints" / "last.ckpt"


def test_a_run_that_has_trained_as_far_as_asked_is_left_alone(logs):
    run(logs / "version_0", data=settings(TwoGaussianDataModule), epochs=2)
    finished = decide(request("fit", logs, ckpt_path="last", max_epochs=2))
    assert finished.finished == (
        f"{logs}/version_0 has trained as far as asked: it is at epoch 2, and "
        "trainer.max_epochs is 2; nothing was trained or written"
    )
    assert finished.line() == finished.finished
    further = decide(request("fit", logs, ckpt_path="last", max_epochs=5))
    assert (further.finished, further.run) == (None, logs / "version_0")
    assert further.line() == f"resuming {logs}/version_0 from its last.ckpt, at epoch 2, step 8"
    steps = decide(request("fit", logs, ckpt_path="last", max_epochs=None, max_steps=8))
    assert "it is at step 8, and trainer.max_steps is 8" in steps.finished


def test_any_checkpoint_but_last_starts_a_new_run_from_it(logs):
    run(logs / "version_0", data=settings(TwoGaussianDataModule))
    decision = decide(request("fit", logs, ckpt_path="best", max_epochs=5))
    assert (decision.run, decision.checkpoint.name) == (None, "epoch=1-step=8-loss_val=0.6900.ckpt")
    assert "(only a run's last.ckpt continues that run)" in decision.line()


def test_resuming_on_other_data_is_refused_unless_asked_for(logs):
    run(logs / "version_0", data=settings(TwoGaussianDataModule, scale=0.8))
    other = dict(ckpt_path="last", max_epochs=5, data=settings(TwoGaussianDataModule))
    with pytest.raises(
        ValueError, match=r"other data settings \(data.scale: 0.8 in the checkpoint, 0.2 now\)"
    ):
        decide(request("fit", logs, **other))
    assert decide(request("fit", logs, **other, resume_with_other_data=True)).run == logs / "version_0"


def test_the_logger_version_names_the_run(logs):
    run(logs / "version_3", data=settings(TwoGaussianDataModule))
    run(logs / "version_4", data=settings(TwoGaussianDataModule))
    decision = decide(request("test", logs, logger_version=3))
    assert (decision.run, decision.why) == (logs / "version_3", "the run trainer.logger.version names")


def test_a_checkpoint_of_other_data_or_with_settings_the_data_lacks_is_refused(logs, tmp_path):
    table = save(tmp_path / "table.ckpt", data=settings(TabularDataModule, path="a.csv"), data_class=TABLE)
    with pytest.raises(ValueError, match="was trained on TabularDataModule, not on TwoGaussianDataModule"):
        decide(request("test", logs, ckpt_path=str(table)))
    odd = save(tmp_path / "odd.ckpt", data={**settings(TwoGaussianDataModule), "payload": "x"})
    with pytest.raises(CheckpointError, match=r"datamodule_hyper_parameters\.payload is not a setting"):
        decide(request("test", logs, ckpt_path=str(odd)))
    nan = save(tmp_path / "nan.ckpt", data=settings(TwoGaussianDataModule, scale=float("nan")))
    with pytest.raises(CheckpointError, match=r"datamodule_hyper_parameters.scale is nan, not"):
        decide(request("test", logs, ckpt_path=str(nan)))


def test_the_data_settings_a_command_gives_are_those_its_command_line_and_config_files_name(tmp_path):
    (tmp_path / "nested.yaml").write_text(
        "data:\n  class_path: TwoGaussianDataModule\n  init_args:\n    scale: 0.5\n"
    )
    (tmp_path / "flat.yaml").write_text("data:\n  num_samples: 100\ntrainer:\n  max_epochs: 1\n")
    (tmp_path / "data.yaml").write_text("mean_b: 3.0\n")
    args = [
        *("-c", str(tmp_path / "nested.yaml"), f"--config={tmp_path / 'flat.yaml'}"),
        *("--data.dim=2", "--data.init_args.seed", "3", "--data", '{"init_args": {"batch_size": 8}}'),
        *(f"--data={tmp_path / 'data.yaml'}", "--trainer.max_steps=5", "--model.network.hidden_sizes=[4]"),
    ]
    given = given_settings(args, "data")
    assert given == {"scale", "num_samples", "dim", "seed", "batch_size", "mean_b"}
    assert given_settings(["--data", "TabularDataModule", "--data.help", "X"], "data") == set()
