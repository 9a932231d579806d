"""A member of a stack and the same run solo agree, for every kind of run that stacks: the same best weights
within 1e-6, and the same test metrics to 4 decimals.

Each kind trains a stack of two members whose training sets differ in size, so their epochs end at different
steps, with short last batches (or, with epochs of one batch, each member's whole set at every step); the
solo runs are ``binclf fit`` and a test of its best checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import DEFAULT_CONFIG, built
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from binclf.checkpoint import load_checkpoint
from binclf.cli import BinclfCLI
from binclf.module import BinaryClassifier
from binclf.study.execute import _train_and_test_stack, execute
from binclf.study.plan import Run, plan, run_args
from binclf.study.stacked import finish_member, forward_problem, member_of, train_stack

STEPS = 30
ARGS = [
    "--data.num_val_samples=200",
    "--data.num_test_samples=1000",
    "--data.batch_size=64",
    "--model.optimizer.lr=0.1",
    "--trainer.log_every_n_steps=4",
]


class ThreeLayerNet(nn.Module):
    """A user's own network: three linear layers with tanh between them, written out by hand."""

    def __init__(self, input_dim: int = 1, width: int = 16) -> None:
        super().__init__()
        self.first = nn.Linear(input_dim, width)
        self.second = nn.Linear(width, width)
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.second(torch.tanh(self.first(x)))))


KINDS = {
    "MLP": [],
    "LogisticRegression": ["--model.network=binclf.networks.LogisticRegression"],
    "user network": [f"--model.network={__name__}.ThreeLayerNet"],
    # A step this large overshoots: the best checkpoint is an earlier one than the last.
    "momentum SGD": ["--model.optimizer.lr=0.2", "--model.optimizer.momentum=0.9"],
    "Adam": ["--model.optimizer=Adam", "--model.optimizer.lr=0.01"],
    # Epochs of 4 and 5 steps: the two members' schedules step at different steps.
    "StepLR": ["--model.lr_scheduler=StepLR", "--model.lr_scheduler.step_size=2"],
    # As configs/ratio.yaml, the network sees standardised inputs; and a step large enough to overshoot, so
    # that later validations refit the calibration while the best checkpoint keeps its own.
    "temperature calibration": [
        "--model.calibration=temperature",
        "--data.standardize=true",
        "--model.optimizer.lr=0.2",
        "--model.optimizer.momentum=0.9",
    ],
    # Nothing is learnt, so every validation ties: the first one stays the best, as ModelCheckpoint keeps it.
    "tied validation losses": ["--model.optimizer.lr=0"],
    # Every epoch one batch of all 200 or 300 rows, which the solo run shuffles and the stack does not.
    "epochs of one batch": ["--data.batch_size=512"],
}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf-sweep"])
    return tmp_path


def two_runs(root, extra):
    grid = {"data.num_samples": [100, 150]}
    return plan(str(DEFAULT_CONFIG), grid, [0], [*ARGS, *extra], root / "stacked", None, STEPS)


def stacked(runs, root, model_class=None):
    """Each run's best checkpoint and test metrics from one stack of all of them."""
    template = BinclfCLI("fit", run_args(runs[0]))
    members = [member_of(template, run_args(run), run.name, str(root / "stacked")) for run in runs]
    if model_class is not None:
        for member in members:
            member.model.__class__ = model_class
    trainer = template.config.trainer
    train_stack(
        members,
        steps=STEPS,
        val_every=trainer.val_check_interval,
        log_every=trainer.log_every_n_steps,
        batch_size=members[0].datamodule.batch_size,
    )
    outcomes = {}
    for member in members:
        metrics = finish_member(member, root / "stacked" / member.name)
        [checkpoint] = (root / "stacked" / member.name / "checkpoints").glob("*.ckpt")
        outcomes[member.name] = (load_checkpoint(checkpoint), metrics, curves(root / "stacked" / member.name))
    return outcomes


def solo_args(run, root) -> list[str]:
    """The run's ``binclf fit`` arguments, logging into a folder of its own beside the stack's."""
    return [arg.replace(str(root / "stacked"), str(root / "solo")) for arg in run.args]


def solo(run, root, model_class=None):
    """The run's best checkpoint and test metrics from its own ``binclf fit``, in a folder of its own."""
    cli = built("fit", solo_args(run, root)[1:])
    if model_class is not None:
        cli.model.__class__ = model_class
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    checkpoint = load_checkpoint(cli.trainer.checkpoint_callback.best_model_path)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")}
    return checkpoint, metrics, curves(Path(cli.trainer.logger.log_dir))


def curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    """The run's TensorBoard scalars: (step, value) of each training and validation curve."""
    events = EventAccumulator(str(run))
    events.Reload()
    tags = [tag for tag in events.Tags()["scalars"] if tag.startswith(("loss/", "train/", "val/"))]
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in tags}


def assert_same_run(stacked_outcome, solo_outcome) -> None:
    stacked_checkpoint, stacked_metrics, stacked_curves = stacked_outcome
    solo_checkpoint, solo_metrics, solo_curves = solo_outcome
    assert (stacked_checkpoint["global_step"], stacked_checkpoint["epoch"]) == (
        solo_checkpoint["global_step"],
        solo_checkpoint["epoch"],
    )
    solo_state, stacked_state = solo_checkpoint["state_dict"], stacked_checkpoint["state_dict"]
    assert solo_state.keys() == stacked_state.keys()
    for name, tensor in solo_state.items():
        torch.testing.assert_close(stacked_state[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert stacked_metrics.keys() == solo_metrics.keys()
    for key, value in solo_metrics.items():
        assert round(stacked_metrics[key], 4) == round(value, 4), key
    # The curves in TensorBoard too: the same steps, and values within what float arithmetic changes.
    assert {
        "loss/train_step",
        "loss/train_epoch",
        "loss/val",
        "val/acc",
        "val/acc_best",
    } <= solo_curves.keys()
    for tag in ("loss/train_step", "loss/train_epoch", "loss/val", "val/acc", "val/acc_best"):
        assert [step for step, _ in stacked_curves[tag]] == [step for step, _ in solo_curves[tag]], tag
        for (_, stacked_value), (_, solo_value) in zip(stacked_curves[tag], solo_curves[tag], strict=True):
            assert stacked_value == pytest.approx(solo_value, rel=1e-4, abs=1e-6), tag


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_member_of_a_stack_is_its_solo_run(in_tmp, kind):
    runs = two_runs(in_tmp, KINDS[kind])
    together = stacked(runs, in_tmp)
    for run in runs:
        alone = solo(run, in_tmp)
        assert_same_run(together[run.name], alone)
        if kind in ("momentum SGD", "temperature calibration", "tied validation losses"):  # what they show
            assert alone[0]["global_step"] < STEPS


# Grids whose members differ in optimizer or scheduler settings, and in training size (epochs of 4 and 5
# steps): each member steps an optimizer of its own settings in the stack. Which of the grid's runs stack.
OPTIMIZER_GRIDS = {
    "SGD lr, momentum and weight decay": (
        {
            "data.num_samples": [100, 150],
            "model.optimizer.lr": [0.05, 0.2],
            "model.optimizer.momentum": [0.0, 0.9],
            "model.optimizer.weight_decay": [0.0, 0.01],
        },
        [],
        [0, 5, 10, 15],  # lr, momentum, weight decay: each member's own
    ),
    "Adam lr and betas": (
        {
            "data.num_samples": [100, 150],
            "model.optimizer.lr": [0.005, 0.01],
            "model.optimizer.betas": ["[0.9, 0.999]", "[0.8, 0.99]"],
        },
        # Adam divides each step by the gradient's running size, so rounding differences between a stack
        # and a solo run grow with its learning rate: up to 0.01 they stay within the tolerance above.
        ["--model.optimizer=Adam"],
        [0, 3, 7],
    ),
    "StepLR step size and gamma": (
        {
            "data.num_samples": [100, 150],
            "model.lr_scheduler.step_size": [2, 3],
            "model.lr_scheduler.gamma": [0.5, 0.1],
        },
        ["--model.lr_scheduler=StepLR"],
        [0, 3, 6],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("grid", OPTIMIZER_GRIDS)
def test_members_with_their_own_optimizer_settings_are_their_solo_runs(in_tmp, grid):
    settings, extra, chosen = OPTIMIZER_GRIDS[grid]
    every = plan(str(DEFAULT_CONFIG), settings, [0], [*ARGS, *extra], in_tmp / "stacked", None, STEPS)
    runs = [every[index] for index in chosen]
    together = stacked(runs, in_tmp)
    for run in runs:
        assert_same_run(together[run.name], solo(run, in_tmp))


class WeightedLoss(BinaryClassifier):
    """A user's module with its own loss: class b weighted five times."""

    def sample_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = torch.tensor(5.0, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none", pos_weight=weight)


@pytest.mark.slow
def test_the_stack_follows_a_subclass_that_changes_the_loss(in_tmp):
    runs = two_runs(in_tmp, [])
    weighted = stacked(runs, in_tmp, WeightedLoss)
    default = stacked(runs, in_tmp / "default")
    for run in runs:
        assert_same_run(weighted[run.name], solo(run, in_tmp, WeightedLoss))
        moved = (
            weighted[run.name][0]["state_dict"]["network.layers.4.bias"]
            - default[run.name][0]["state_dict"]["network.layers.4.bias"]
        )
        assert moved.abs().max() > 1e-3  # the weighted loss trains another network


class Between(nn.Module):
    """Two linear layers with ``middle`` between them: dropout or batch norm, say."""

    def __init__(self, middle: nn.Module) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(1, 8), middle, nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) if x.sum().item() > 0 else -self.linear(x)


class HeldOutside(nn.Module):
    """Reads its weight through a list, where torch.func cannot swap in a member's own."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.held = [self.linear.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.held[0].T + self.linear.bias


@pytest.mark.parametrize(
    ("network", "reason"),
    [
        (HeldOutside(), "computes something else stacked than alone"),
        (Between(nn.Dropout(0.5)), "two outputs for one input"),
        (Between(nn.BatchNorm1d(8)), "updates its buffer layers.1.running_mean in forward"),
        (DataDependent(), "cannot run under torch.func.vmap"),
        (ThreeLayerNet(), None),
    ],
    ids=["weight outside its parameters", "dropout", "batch norm", "data-dependent branch", "pure"],
)
def test_a_network_stacks_only_if_its_forward_is_pure(network, reason):
    found = forward_problem(network, torch.randn(8, 1))
    if reason is None:
        assert found is None
    else:
        assert reason in found
        assert "\n" not in found


@pytest.mark.slow
@pytest.mark.parametrize(
    ("steps", "where"), [(30, "training"), (10, "validation")], ids=["in training", "at a validation"]
)
def test_a_member_that_diverges_fails_with_its_solo_runs_message(in_tmp, steps, where):
    """A learning rate far too large: the loss becomes NaN, during training, or at a validation when one
    follows every step; each member fails as its ``binclf fit`` does, with the same line."""
    grid = {"data.num_samples": [100, 150]}
    extra = [*ARGS, "--model.optimizer.lr=1e6"]
    runs = plan(str(DEFAULT_CONFIG), grid, [0], extra, in_tmp / "stacked", None, steps)
    outcomes, _ = _train_and_test_stack(runs)
    for run, outcome in zip(runs, outcomes, strict=True):
        directory = in_tmp / "solo" / run.name
        alone = execute(Run(run.name, run.settings, run.seed, directory, solo_args(run, in_tmp)))
        assert outcome["status"] == alone["status"] == "failed"
        assert outcome["error"] == alone["error"]
        assert outcome["error"].startswith(f"the {where} loss became nan")
