"""How a study's runs are handed to its workers: whole stacks first, and which runs may share a stack. Plain
data: no run is trained here."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import DEFAULT_CONFIG
from jsonargparse import Namespace

from binclf.data import TwoGaussianDataModule
from binclf.study.plan import plan, tasks
from binclf.study.stacked import stackable


def runs_of(grid, seeds=(0,), steps: int | None = 100, epochs: int | None = None):
    return plan(str(DEFAULT_CONFIG), grid, list(seeds), [], Path("sweep"), epochs, steps)


def stacks(grid, workers, **budget) -> list[list[str]]:
    return [[run.name for run in task] for task in tasks(runs_of(grid, **budget), workers, "stacked")]


def test_a_two_by_two_learning_rate_and_seed_grid_is_one_stack_per_worker_not_four_solo_runs():
    assert stacks({"model.optimizer.lr": [0.1, 0.3]}, workers=2, seeds=(0, 1)) == [
        ["lr=0.1,seed=0", "lr=0.3,seed=0"],
        ["lr=0.1,seed=1", "lr=0.3,seed=1"],
    ]


def test_data_seed_and_optimizer_settings_share_a_stack_and_the_rest_do_not():
    grid = {
        "data.scale": [0.3, 1.0],
        "model.optimizer.lr": [0.1, 0.3],
        "model.optimizer.momentum": [0.0, 0.9],
        "model.lr_scheduler.gamma": [0.5],
    }
    [stack] = stacks(grid, workers=1, seeds=(0, 1))
    assert len(stack) == 16
    # What decides a network's shape, a batch's size, the optimizer's or network's class: a stack each.
    for key, values in [
        ("data.batch_size", [64, 128]),
        ("data.dim", [1, 2]),
        ("model.optimizer", ["SGD", "Adam"]),
        ("model.network.hidden_sizes", ["[8]", "[16]"]),
        ("trainer.gradient_clip_val", [0.5, 1.0]),
    ]:
        assert sorted(map(len, stacks({key: values, "data.scale": [0.3, 1.0]}, workers=1))) == [2, 2], key


def test_a_group_is_halved_only_for_an_idle_worker():
    four = {"data.scale": [0.3, 1.0], "data.num_samples": [100, 200]}
    assert sorted(map(len, stacks(four, workers=1))) == [4]
    assert sorted(map(len, stacks(four, workers=2))) == [2, 2]
    assert sorted(map(len, stacks(four, workers=3))) == [1, 1, 2]
    assert sorted(map(len, stacks(four, workers=8))) == [1, 1, 1, 1]
    assert sorted(map(len, stacks({"data.scale": [0.3, 0.5, 1.0]}, workers=2))) == [1, 2]
    two_groups = {"model.optimizer": ["SGD", "Adam"], "data.scale": [0.3, 1.0]}
    assert sorted(map(len, stacks(two_groups, workers=2, seeds=(0, 1)))) == [4, 4]
    assert sorted(map(len, stacks(two_groups, workers=4, seeds=(0, 1)))) == [2, 2, 2, 2]


def test_with_an_epoch_budget_runs_of_one_training_size_stack():
    grid = {"data.num_samples": [100, 200], "data.scale": [0.3, 1.0]}
    by_epochs = stacks(grid, workers=1, steps=None, epochs=3)
    assert sorted(by_epochs) == [
        ["num_samples=100,scale=0.3,seed=0", "num_samples=100,scale=1,seed=0"],
        ["num_samples=200,scale=0.3,seed=0", "num_samples=200,scale=1,seed=0"],
    ]
    assert len(stacks(grid, workers=1, steps=50)) == 1  # steps: one stack, whatever the sizes


def test_solo_mode_gives_each_run_alone():
    assert stacks({"data.scale": [0.3, 1.0]}, workers=1, seeds=(0, 1)) == [
        ["scale=0.3,seed=0", "scale=0.3,seed=1", "scale=1,seed=0", "scale=1,seed=1"]
    ]
    solo = tasks(runs_of({"data.scale": [0.3, 1.0]}), 1, "solo")
    assert [[run.name for run in task] for task in solo] == [["scale=0.3,seed=0"], ["scale=1,seed=0"]]


TRAINER = {
    "max_steps": 100,
    "max_epochs": -1,
    "val_check_interval": 10,
    "strategy": "auto",
    "devices": 1,
    "num_nodes": 1,
    "accumulate_grad_batches": 1,
    "gradient_clip_val": None,
    "precision": None,
}


def judged(**trainer) -> str | None:
    config = Namespace(
        trainer=Namespace(**(TRAINER | trainer)), checkpoint={"monitor": "loss/val", "mode": "min"}
    )
    built = SimpleNamespace(model=SimpleNamespace(lr_scheduler=None), data=TwoGaussianDataModule())
    return stackable(config, built)


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ({"accumulate_grad_batches": 2}, "trainer.accumulate_grad_batches=2 is not supported in a stack"),
        ({"gradient_clip_val": 1.0}, "trainer.gradient_clip_val=1.0 is not supported in a stack"),
        ({"precision": "16-mixed"}, "trainer.precision=16-mixed is not supported in a stack"),
        ({"devices": 2}, "trainer.devices=2 is not supported in a stack"),
        ({"val_check_interval": 0.5}, "with a budget in steps, it validates at a fraction of an epoch"),
        (
            {"max_steps": -1, "max_epochs": 3, "val_check_interval": 5},
            "with a budget in epochs, it validates within",
        ),
        (
            {"max_steps": -1, "max_epochs": None},
            "its budget is neither a number of steps nor a number of epochs",
        ),
    ],
)
def test_what_a_stack_cannot_do_the_same_as_a_solo_run_is_named(setting, reason):
    assert judged() is None
    assert judged(max_steps=-1, max_epochs=3, val_check_interval=1.0) is None
    assert judged(**setting).startswith(reason)
