"""Faults at known points, for tests that stop or break a run: components the CLI builds by class_path, so
that they work in processes of their own (``PYTHONPATH`` names this folder). Nothing here waits on a clock."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from binclf.data import TwoGaussianDataModule
from binclf.networks import MLP
from binclf.workarounds import NullProfiler


class SignalAtEpochStart(Callback):
    """Sends ``signal_name`` as ``epoch`` starts, when every checkpoint of the epoch before is written: to
    this process, or with ``to_parent`` to its parent (a sweep, from one of its workers).

    With ``pid_file``, each process appends its id there as the epoch starts, and the signal goes only from
    the one that brings the count to ``pids`` (every worker of a sweep has then started)."""

    def __init__(
        self,
        epoch: int,
        signal_name: str,
        to_parent: bool = False,
        pid_file: str | None = None,
        pids: int = 1,
    ) -> None:
        self.epoch = epoch
        self.signal_number = signal.Signals[signal_name]
        self.to_parent = to_parent
        self.pid_file = Path(pid_file) if pid_file else None
        self.pids = pids

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch != self.epoch:
            return
        if self.pid_file is not None:
            with self.pid_file.open("a") as file:
                file.write(f"{os.getpid()}\n")
            if len(self.pid_file.read_text().split()) < self.pids:
                return
        os.kill(multiprocessing.parent_process().pid if self.to_parent else os.getpid(), self.signal_number)


class SigtermWhenBuilt(TwoGaussianDataModule):
    """The Gaussian data module, which sends SIGTERM to its own process while the CLI builds it: after the
    run folder has been claimed, before any training."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        os.kill(os.getpid(), signal.SIGTERM)


class PoisonWeightsAtEpoch(Callback):
    """Sets every weight of the model to NaN as validation of ``epoch`` starts, as a diverging run would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.fill_(float("nan"))


class TinyNet(nn.Module):
    """A network of the user's own, outside binclf: one linear layer."""

    def __init__(self, input_dim: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(input_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class CountingProfiler(NullProfiler):
    """binclf's no-op profiler, counting how often Lightning asks it to profile something."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def profile(self, action_name: str) -> contextlib.nullcontext:
        self.calls += 1
        return super().profile(action_name)


class HeldAtCall(MLP):
    """The MLP, whose process is held as it computes its ``call``-th forward pass, having written
    ``folder/held``, until ``folder/go`` exists: a stack stopped at a known step, since a stack computes all
    its members' forward passes in one call of its first member's network a step."""

    def __init__(self, folder: str, call: int, **settings) -> None:
        super().__init__(**settings)
        self.folder, self.call, self.calls = Path(folder), call, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.call:
            (self.folder / "held").touch()
        while self.calls == self.call and not (self.folder / "go").exists():
            time.sleep(0.05)  # waits on a file the test creates, not on a clock
        return super().forward(x)


class HoldAtTrainStart(Callback):
    """As training starts, writes ``started@<run>@<pid>@<ray node id>`` into ``folder`` (holding the number
    of its network namespace) and, unless the run
    is ``except_run``, waits until ``folder/go`` exists: a run held at a known point, for as long as a test
    needs it running (to lose its node, or to stop its sweep)."""

    def __init__(self, folder: str, except_run: str | None = None) -> None:
        self.folder = Path(folder)
        self.except_run = except_run

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        import ray

        run = trainer.logger.version if trainer.logger is not None else "stack"
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
        # Its network namespace inside: the host it runs on, where hosts are namespaces on one machine.
        started = self.folder / f"started@{run}@{os.getpid()}@{node}"
        started.write_text(str(os.stat("/proc/self/ns/net").st_ino))
        while run != self.except_run and not (self.folder / "go").exists():
            time.sleep(0.05)  # waits on a file the test creates, not on a clock
