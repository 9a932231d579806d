"""A fit keeps nothing per step: what is alive after training does not grow with the number of steps.

A small tensor kept from every step (a loss, say) pins the memory freed around it, and the process then grew
by about a batch of activations a step (``benchmarks/scale.py`` reports that growth). Counted here with
``gc.get_objects()``, not a clock or the process's memory.
"""

from __future__ import annotations

import gc
import warnings

import torch


def _tensors_alive() -> int:
    gc.collect()
    with warnings.catch_warnings():  # touching every object touches torch's deprecated ones, which warn
        warnings.simplefilter("ignore", FutureWarning)
        return sum(isinstance(obj, torch.Tensor) for obj in gc.get_objects())


def test_the_tensors_alive_after_a_fit_do_not_grow_with_its_steps(binclf):
    alive = {}
    for steps in (100, 400):
        cli = binclf("fit", "--trainer.max_epochs=-1", f"--trainer.max_steps={steps}")
        assert cli.trainer.global_step == steps
        alive[steps] = _tensors_alive()  # with the CLI, its trainer, model and callbacks still alive
        del cli
    # Four times the steps: not one more tensor per step, nor per few steps.
    assert alive[400] - alive[100] < 30, alive
