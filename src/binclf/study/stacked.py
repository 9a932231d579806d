"""Many small classifiers trained at once: the study's runs that differ only in their data, seeds and
optimizer settings, as one stack of the template's own ``BinaryClassifier``s that take every optimizer step
together.

A 4 K-parameter network is too small to keep a core busy, and Lightning's machinery costs as much per step
as its arithmetic. Stacked, each parameter of the K members' networks is one tensor with the members along
its first dimension (``torch.func.stack_module_state``), and one ``torch.func.vmap`` runs every member's
forward and per-sample loss in one batched pass. The stack's own plain loop steps it: nothing runs per step
but the members' arithmetic and their bookkeeping.

Nothing about training is defined here. Each member is the ``BinaryClassifier`` that ``binclf fit`` builds
for its run, and the stack uses that module's network (``functional_call``), loss (``sample_losses``),
divergence check, validation metrics and calibration (``update_validation``, ``compute_validation``),
optimizer and scheduler settings, and Lightning's ``Trainer.save_checkpoint`` for its checkpoint. A change
to ``module.py`` reaches the stack as it reaches ``binclf fit``. What the stack adds is the bookkeeping that
keeps each member as its solo run would be:

- its data: the same draws, splits and per-epoch shuffles, from its own data module. Each member steps
  through its own epochs; a last batch that is short is padded, and the padding masked out of the loss.
  An epoch of one batch is all of the member's rows, taken in the order they lie: its shuffle would change
  only the order in which the batch's mean loss adds them up;
- its initial weights: its network is built by the CLI right after seeding with its seed;
- its loss: the mean over its own rows. The stack's loss is the *sum* of the members' losses, so each
  member's gradient is that of its own loss alone, and an element-wise optimizer (SGD with or without
  momentum, Adam, AdamW) updates each member as it would alone;
- its optimizer settings: members with the same optimizer and scheduler settings step one optimizer, built
  by their module; members with other settings step one of their own. Their weights are joined for the
  forward pass, so one ``vmap`` still runs every member;
- its learning-rate schedule: the scheduler steps at the end of each of the member's epochs, as Lightning
  steps the module's scheduler, so members with a scheduler share one only with members whose epochs have
  the same length;
- its validation, on its own validation split and schedule: its calibration is fitted there, and it keeps
  the weights of its lowest validation loss, as ``ModelCheckpoint(mode="min")`` would;
- its test, of those weights, through ``BinaryClassifier``'s test step, and its outputs: ``result.json``,
  TensorBoard scalars and a checkpoint that ``binclf test --ckpt_path`` accepts.

:func:`stackable` and :func:`forward_problem` say why a run cannot join a stack; it then trains solo.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torch.optim.lr_scheduler import ReduceLROnPlateau

from binclf.data import InMemoryDataModule
from binclf.data.batches import EpochBatchSampler
from binclf.module import BinaryClassifier
from binclf.monitoring.messages import report
from binclf.monitoring.tensorboard import LogAtTrainedStep, RunLogger, hparams_row, write_hparams_row
from binclf.oracle import scoring_callbacks
from binclf.runs import checkpoint_filename
from binclf.safe_io import atomic_write

MONITOR = "loss/val"  # a member's best checkpoint is chosen by it, as binclf fit's by default
# The TensorBoard points a member's writer holds before the stack waits for it to write them: a whole
# training curve (a member with one batch per epoch has a point per step), not TensorBoard's default ten,
# which hands the writer thread every tenth point.
LOGGED_POINTS = 10_000


@dataclass
class Member:
    """One run of the stack: its data, its model as the CLI built it (initial weights, hyperparameters,
    optimizer), its TensorBoard logger, and what the stack learns about it."""

    name: str
    datamodule: InMemoryDataModule
    model: BinaryClassifier
    logger: RunLogger
    hparams_row: dict[str, Any]
    steps_per_epoch: int = 0
    best_loss: float = math.inf
    best_step: int = 0
    best_state: dict[str, Tensor] = field(default_factory=dict)  # the whole module's, as a checkpoint's
    failure: str | None = None
    validations: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # step, logged values
    train_losses: list[tuple[int, float]] = field(default_factory=list)  # step (0-based), its loss
    epoch_losses: list[tuple[int, float]] = field(default_factory=list)  # last step of an epoch, its mean


def forward_problem(network: nn.Module, features: Tensor) -> str | None:
    """Why ``network`` cannot be stacked, or ``None``: its forward must be a pure function of its parameters,
    buffers and input (no randomness, no buffer updated in forward), and give under ``vmap`` what it gives
    alone. Probed on ``features``, a few rows of the run's own data, in training mode."""
    name = type(network).__name__
    copies = [copy.deepcopy(network).train() for _ in range(2)]
    with torch.no_grad():  # two members that differ, as a stack's do (a local stream: no global RNG drawn)
        generator = torch.Generator().manual_seed(0)
        for parameter in copies[1].parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator).to(parameter))
    buffers_before = {key: value.clone() for key, value in copies[0].named_buffers()}
    with torch.no_grad():
        alone, again = copies[0](features), copies[0](features)
    if not torch.equal(alone, again):
        return f"its network, {name}, gives two outputs for one input (randomness in forward, e.g. dropout)"
    for key, value in copies[0].named_buffers():
        if not torch.equal(value, buffers_before[key]):
            return f"its network, {name}, updates its buffer {key} in forward (as batch norm does)"
    try:
        with torch.no_grad():
            parameters, buffers = stack_module_state(copies)
            # The features batched too, as in training: each member sees its own rows.
            batched = features.expand(len(copies), *features.shape)
            stacked = vmap(lambda p, b, x: functional_call(copies[0], (p, b), (x,)))(
                parameters, buffers, batched
            )
            each = [member(features) for member in copies]
    except Exception as error:  # whatever a user's forward raises under vmap
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"its network, {name}, cannot run under torch.func.vmap: {first_line}"
    for member, output in enumerate(each):
        if stacked.shape[1:] != output.shape or not torch.allclose(
            stacked[member], output, rtol=1e-5, atol=1e-6
        ):
            return (
                f"its network, {name}, computes something else stacked than alone "
                "(weights held outside its parameters?)"
            )
    return None


class StackedBatches:
    """Each optimizer step's batches of all members, ``(features [K, B, d], targets [K, B, 1], mask [K, B])``:
    member ``k``'s rows are the batch its solo run would take at that step (its own epochs, its own
    per-epoch shuffle; an epoch of one batch unshuffled), padded to the batch size; the mask marks real rows.

    Every member's training rows lie one after another in one tensor, as the network sees them (a data
    module's transform acts on each row alone, as it does on a whole split for validation). A step's
    batches are then one gather, of row numbers laid out ``chunk`` steps at a time from each member's own
    batch order."""

    def __init__(
        self,
        members: list[Member],
        batch_size: int,
        steps: int,
        device: str | torch.device = "cpu",
        chunk: int = 128,
    ) -> None:
        self.members, self.batch_size, self.steps, self.chunk = members, batch_size, steps, chunk
        self.device = torch.device(device)
        sets = [member.datamodule.train_set for member in members]
        # On the device once, as a solo run's in-memory batches are: no step copies data from the host.
        self.features = torch.cat(
            [member.datamodule.transform(data.features) for member, data in zip(members, sets, strict=True)]
        ).to(self.device)
        self.targets = torch.cat([data.targets for data in sets]).to(self.device)
        sizes = torch.tensor([len(data.features) for data in sets])
        self.first_rows = (torch.cumsum(sizes, 0) - sizes).tolist()  # where each member's rows begin
        self.samplers = [
            EpochBatchSampler(len(data.features), batch_size, shuffle=True, seed=member.datamodule.seed)
            for member, data in zip(members, sets, strict=True)
        ]

    def __len__(self) -> int:
        return self.steps

    def _member_batches(self, k: int) -> Iterator[Tensor]:
        """Member ``k``'s batches, ``chunk`` at a time: ``[chunk, B]`` row numbers in the stacked rows, with
        ``-1`` where a short last batch of an epoch ends."""
        sampler = self.samplers[k]
        # A training epoch's batches are its order cut every B rows (EpochBatchSampler.batch_bounds), the
        # last one short: each epoch's order padded to whole batches. Every epoch has the same length, so
        # the epochs a chunk needs are drawn, stacked and padded together.
        per_epoch = len(sampler)
        padding = per_epoch * self.batch_size - sampler.shard_size
        if per_epoch == 1:
            # An epoch of one batch is every row, at every step. Its shuffle changes only the order in which
            # the batch's mean loss adds up its rows, so the rows are taken as they lie, with no order drawn.
            every_row = torch.arange(sampler.shard_size) + self.first_rows[k]
            same_rows = F.pad(every_row, (0, padding), value=-1).expand(self.chunk, -1)
            while True:
                yield same_rows
        epoch, pending = 0, torch.empty(0, self.batch_size, dtype=torch.long)
        while True:
            while len(pending) < self.chunk:
                orders = []
                for _ in range(-(-(self.chunk - len(pending)) // per_epoch)):  # whole epochs, enough
                    sampler.set_epoch(epoch)
                    orders.append(sampler.shard())
                    epoch += 1
                padded = F.pad(torch.stack(orders) + self.first_rows[k], (0, padding), value=-1)
                pending = torch.cat([pending, padded.view(-1, self.batch_size)])
            yield pending[: self.chunk]
            pending = pending[self.chunk :]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        streams = [self._member_batches(k) for k in range(len(self.members))]
        for step in range(self.steps):
            if step % self.chunk == 0:  # the next chunk of steps: [K, chunk, B] rows, and the real ones
                rows = torch.stack([next(stream) for stream in streams]).to(self.device)
                real = rows >= 0
                rows, mask = torch.where(real, rows, 0), real.float()
            index = rows[:, step % self.chunk]
            yield self.features[index], self.targets[index], mask[:, step % self.chunk]


def _stacked_split(members: list[Member], name: str) -> tuple[Tensor, Tensor, Tensor]:
    """A whole evaluation split of every member, padded to the longest: features, targets, mask."""
    sets = [getattr(member.datamodule, name) for member in members]
    longest = max(len(data.features) for data in sets)
    features = torch.zeros(len(sets), longest, sets[0].features.shape[1])
    targets = torch.zeros(len(sets), longest, 1)
    mask = torch.zeros(len(sets), longest)
    for k, (member, data) in enumerate(zip(members, sets, strict=True)):
        features[k, : len(data.features)] = member.datamodule.transform(data.features)
        targets[k, : len(data.features)] = data.targets
        mask[k, : len(data.features)] = 1.0
    return features, targets, mask


class MemberGroup(nn.Module):
    """Members that step one optimizer (and scheduler) together, built by their first member's module: each
    parameter and buffer of their networks as one tensor, members along dimension 0."""

    def __init__(self, members: list[Member], rows: slice) -> None:
        super().__init__()
        self.model = [members[0].model]  # a list: the template, not a submodule with weights of its own
        self.rows = rows  # this group's members in the stack's order
        self.steps_per_epoch = members[0].steps_per_epoch
        parameters, buffers = stack_module_state([member.model.network for member in members])
        self.parameter_names = list(parameters)
        self.stacked = nn.ParameterList(nn.Parameter(parameters[name]) for name in self.parameter_names)
        self.buffer_names = list(buffers)
        for index, name in enumerate(self.buffer_names):
            self.register_buffer(f"buffer_{index}", buffers[name])

    def stacked_buffers(self) -> list[Tensor]:
        return [getattr(self, f"buffer_{i}") for i in range(len(self.buffer_names))]

    def member_weights(self, index: int) -> dict[str, Tensor]:
        """Member ``index``'s network state under its own network's names."""
        state = {
            name: weight[index].detach()
            for name, weight in zip(self.parameter_names, self.stacked, strict=True)
        }
        buffers = zip(self.buffer_names, self.stacked_buffers(), strict=True)
        return state | {name: buffer[index] for name, buffer in buffers}


def training_settings(model: BinaryClassifier) -> str:
    """A member's optimizer and scheduler, class and settings, as its hyperparameters record them: members
    with the same step one optimizer together."""
    chosen = {key: model.hparams.get(key) for key in ("optimizer", "lr_scheduler")}
    return json.dumps(chosen, sort_keys=True, default=repr)


class StackedClassifier(nn.Module):
    """Trains the members as one stack; see the module's docstring for what each member keeps of its solo run.

    Validation runs every ``val_every`` steps on each member's whole validation set. ``log_every`` is the
    solo runs' ``log_every_n_steps``: each member's training loss is kept at those steps for its curve.

    Its loop is the plain one in :meth:`fit`: the stack steps its own optimizers, validates on its own
    schedule and keeps its own records, so a Trainer around it would only add its per-step cost.
    """

    def __init__(
        self,
        members: list[Member],
        val_every: int,
        log_every: int,
        batch_size: int,
        steps: int,
        progress_file: Path | None = None,
    ) -> None:
        super().__init__()
        self.progress_file, self.progress_stride = progress_file, max(1, steps // 100)
        # An optimizer and scheduler per group of members with the same settings: a scheduler steps at its
        # members' epochs' ends, so members with a scheduler group by epoch length too.
        by_settings: dict[tuple[int | None, str], list[Member]] = {}
        for member in members:
            length = member.steps_per_epoch if member.model.lr_scheduler is not None else None
            by_settings.setdefault((length, training_settings(member.model)), []).append(member)
        self.members: list[Member] = []
        groups = []
        for group in by_settings.values():
            groups.append(MemberGroup(group, slice(len(self.members), len(self.members) + len(group))))
            self.members += group
        self.groups = nn.ModuleList(groups)
        self.val_every, self.log_every, self.batch_size, self.steps = val_every, log_every, batch_size, steps
        # Each member's loss and real rows at every step, written where they are computed: a copy per step,
        # and its curves are read from them once, when training ends (:meth:`record_curves`).
        self.register_buffer("step_losses", torch.zeros(steps, len(self.members)), persistent=False)
        self.register_buffer("step_rows", torch.zeros(steps, len(self.members)), persistent=False)

    def member_outputs(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Every member's logits and per-sample losses, ``[K, n, 1]``, of features ``[K, n, d]`` and targets
        ``[K, n, 1]``, in the stack's order: one ``vmap`` over all groups' weights, joined along the members'
        dimension, so that each group's gradient reaches its own tensors."""
        first = self.groups[0]
        if len(self.groups) == 1:
            weights, buffers = list(first.stacked), first.stacked_buffers()
        else:
            stacked_weights = (group.stacked for group in self.groups)
            weights = [torch.cat(each) for each in zip(*stacked_weights, strict=True)]
            stacked_buffers = (group.stacked_buffers() for group in self.groups)
            buffers = [torch.cat(each) for each in zip(*stacked_buffers, strict=True)]
        parameters = dict(zip(first.parameter_names, weights, strict=True))
        buffers_by_name = dict(zip(first.buffer_names, buffers, strict=True))
        return vmap(self._member)(parameters, buffers_by_name, features, targets)

    def _member(
        self, parameters: dict[str, Tensor], buffers: dict[str, Tensor], features: Tensor, targets: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One member's logits and per-sample losses: its module's network and loss, with its weights."""
        model = self.members[0].model  # the members share their module's class and network
        logits = functional_call(model.network, (parameters, buffers), (features,))
        return logits, model.sample_losses(logits, targets)

    @property
    def device(self) -> torch.device:
        return self.groups[0].stacked[0].device

    def fit(self) -> None:
        """Every optimizer step of the stack; each member's scheduler steps at its epochs' ends, and each
        member is validated every ``val_every`` steps, as its solo run's ``val_check_interval``."""
        for member in self.members:  # their metrics and calibration are updated where the stack computes
            member.model.to(self.device)
        validation_split = tuple(part.to(self.device) for part in _stacked_split(self.members, "val_set"))
        optimizers, schedulers = self.optimizers_and_schedulers()
        batches = StackedBatches(self.members, self.batch_size, self.steps, self.device)
        for batch_idx, batch in enumerate(batches):
            self.training_step(batch, batch_idx, optimizers)
            step = batch_idx + 1  # optimizer steps taken, as a solo run's global_step now
            self.record_progress(step)
            for group, scheduler in zip(self.groups, schedulers, strict=True):
                if scheduler is not None and step % group.steps_per_epoch == 0:
                    scheduler.step()
            if step % self.val_every == 0:
                self.validate(step, validation_split)
        self.record_curves()

    def training_step(
        self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int, optimizers: list[torch.optim.Optimizer]
    ) -> None:
        """One optimizer step of every member, on its own rows of ``batch``."""
        features, targets, mask = batch
        _, sample_losses = self.member_outputs(features, targets)
        rows = mask.sum(dim=1)
        losses = (sample_losses[..., 0] * mask).sum(dim=1) / rows  # each member's own rows
        finite = torch.isfinite(losses)
        all_finite = bool(finite.all())
        if not all_finite:
            for k in torch.nonzero(~finite)[:, 0].tolist():
                member = self.members[k]
                epoch = batch_idx // member.steps_per_epoch
                member.failure = member.failure or member.model.divergence(
                    "training", losses[k], epoch, batch_idx
                )
        self.step_losses[batch_idx] = losses.detach()
        self.step_rows[batch_idx] = rows
        for optimizer in optimizers:
            optimizer.zero_grad()
        # The sum, not the mean: each member's gradient is its own loss's, as in its solo run. A member that
        # diverged contributes nothing more (its own weights are lost already).
        total = losses.sum() if all_finite else torch.where(finite, losses, 0.0).sum()
        total.backward()
        for optimizer in optimizers:
            optimizer.step()

    def record_progress(self, step: int) -> None:
        """Keep the steps done and due in the progress file, for the sweep's progress lines: a hundred
        times in all, at most."""
        if self.progress_file is not None and (step % self.progress_stride == 0 or step == self.steps):
            with contextlib.suppress(OSError):  # a line the sweep prints, not worth a run
                atomic_write(self.progress_file, lambda tmp: tmp.write_text(f"{step} {self.steps}\n"))

    def record_curves(self) -> None:
        """Each member's training curves, from its loss at every step: the loss at every ``log_every``-th
        step, and each epoch's mean, at the epoch's last step, as the solo run's ``train_loss`` metric takes
        it (batch means weighted by their rows). An epoch cut short by the stack's last step ends there, as
        Lightning ends an epoch cut short by ``max_steps``."""
        losses, rows = self.step_losses.double().cpu(), self.step_rows.double().cpu()
        logged = list(range(self.log_every - 1, self.steps, self.log_every))
        by_epoch_length: dict[int, list[int]] = {}
        for k, member in enumerate(self.members):
            member.train_losses = list(zip(logged, losses[logged, k].tolist(), strict=True))
            by_epoch_length.setdefault(member.steps_per_epoch, []).append(k)
        for length, ks in by_epoch_length.items():
            epochs = -(-self.steps // length)
            cut = (0, 0, 0, epochs * length - self.steps)  # the last epoch padded with steps of no rows
            sums = F.pad(losses[:, ks] * rows[:, ks], cut).view(epochs, length, len(ks)).sum(dim=1)
            counts = F.pad(rows[:, ks], cut).view(epochs, length, len(ks)).sum(dim=1)
            ends = [min(step, self.steps) for step in range(length, epochs * length + 1, length)]
            for k, means in zip(ks, (sums / counts).T.tolist(), strict=True):
                self.members[k].epoch_losses = list(zip(ends, means, strict=True))

    @torch.no_grad()
    def validate(self, step: int, split: tuple[Tensor, Tensor, Tensor]) -> None:
        """Each member's validation on its own rows of ``split`` (:func:`_stacked_split`), through its own
        module; a lower loss keeps its weights."""
        features, targets, mask = split
        logits, sample_losses = self.member_outputs(features, targets)
        for k, member in enumerate(self.members):
            if member.failure is not None:
                continue
            rows = int(mask[k].sum())
            member.model.update_validation(
                sample_losses[k, :rows].mean(), logits[k, :rows], targets[k, :rows]
            )
            try:  # the solo run's epoch at this validation: its last batch, step, is in it
                values = member.model.compute_validation((step - 1) // member.steps_per_epoch)
            except FloatingPointError as error:
                member.failure = str(error)
                continue
            finally:  # as Lightning resets what the module logs, and the module its logits
                model = member.model
                for metric in (model.val_loss, model.val_scores, model.val_logits, model.val_targets):
                    metric.reset()
            numbers = {key: float(value) for key, value in values.items()}
            member.validations.append((step, numbers))
            if numbers[MONITOR] < member.best_loss:  # strictly lower, as ModelCheckpoint(mode="min")
                member.best_loss, member.best_step = numbers[MONITOR], step
                member.best_state = self.member_state(k)

    def member_state(self, k: int) -> dict[str, Tensor]:
        """Member ``k``'s whole module state now: its weights from the stack, and its own module's
        calibration and best accuracy, as a checkpoint of its solo run holds them."""
        member = self.members[k]
        member.model.network.load_state_dict(self.member_weights(k))
        return {name: value.detach().clone() for name, value in member.model.state_dict().items()}

    def member_weights(self, k: int) -> dict[str, Tensor]:
        """Member ``k``'s network weights in the stack now."""
        for group in self.groups:
            if group.rows.start <= k < group.rows.stop:
                return group.member_weights(k - group.rows.start)
        raise IndexError(k)

    def optimizers_and_schedulers(self) -> tuple[list[torch.optim.Optimizer], list[Any]]:
        """Each group's optimizer and scheduler (or ``None``), built by its members' module from their own
        settings."""
        optimizers, schedulers = [], []
        for group in self.groups:
            model = group.model[0]
            optimizers.append(model.optimizer(group.parameters()))
            scheduled = model.lr_scheduler is not None
            schedulers.append(model.lr_scheduler(optimizers[-1]) if scheduled else None)
        return optimizers, schedulers


class TrainedTo(Callback):
    """Records in a member's checkpoint the epoch and step its weights were trained to, which the Trainer
    that tested and saved them, having trained nothing, does not know."""

    def __init__(self, step: int, epoch: int) -> None:
        self.step, self.epoch = step, epoch

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["epoch"], checkpoint["global_step"] = self.epoch, self.step


def epoch_length(member: Member, batch_size: int) -> int:
    """The optimizer steps of one of the member's epochs: its training batches, the last one short."""
    member.datamodule.setup("fit")
    return len(EpochBatchSampler(len(member.datamodule.train_set.features), batch_size, shuffle=True))


def stack_budget(members: list[Member], trainer: Any, batch_size: int) -> tuple[int, int] | str:
    """The stack's optimizer steps and its steps between validations, from the solo runs' ``trainer``
    settings; or why the members cannot share them (epochs of different lengths)."""
    if trainer.max_steps not in (None, -1):
        return trainer.max_steps, trainer.val_check_interval
    lengths = sorted({epoch_length(member, batch_size) for member in members})
    if len(lengths) > 1:
        return (
            f"its budget is in epochs, and their epochs differ in length ({lengths[0]} to {lengths[-1]} "
            "steps): give the sweep --steps to stack them"
        )
    return trainer.max_epochs * lengths[0], (trainer.check_val_every_n_epoch or 1) * lengths[0]


def train_stack(
    members: list[Member],
    *,
    steps: int,
    val_every: int,
    log_every: int,
    batch_size: int,
    accelerator: str = "cpu",
    progress_file: Path | None = None,
) -> StackedClassifier:
    """Fit the stack for ``steps`` optimizer steps; each member ends with its best weights and history, and
    the returned module holds the weights after the last step. With ``progress_file``, the steps done and
    due are kept there."""
    for member in members:
        member.steps_per_epoch = epoch_length(member, batch_size)
    module = StackedClassifier(members, val_every, log_every, batch_size, steps, progress_file)
    module.to(device_of(accelerator))
    module.fit()
    # Each member's curves, one member at a time: its writer takes them all into its queue (LOGGED_POINTS),
    # and has written them out before the next member's are logged, so one writer thread works at a time.
    for member in module.members:
        for step, loss in member.train_losses:
            member.logger.log_metrics({"loss/train_step": loss}, step)
        for step, mean in member.epoch_losses:  # at the epoch's last step, as Lightning logs epoch ends
            member.logger.log_metrics({"loss/train_epoch": mean}, step - 1)
        member.logger.experiment.flush()
    return module


def device_of(accelerator: str) -> torch.device:
    """The one device that a run's ``trainer.accelerator`` (``cpu``, ``gpu``, ``auto``, ...) gives it, as
    Lightning chooses it."""
    trainer = Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False)
    return trainer.strategy.root_device


def finish_member(member: Member, directory: Path, accelerator: str = "cpu") -> dict[str, float]:
    """Test the member's best weights as its solo run would (BinaryClassifier's test step, against its own
    Bayes rule), write its TensorBoard curves, HParams row and best checkpoint; return its test metrics."""
    if not member.best_state:
        raise RuntimeError("no validation ran: val_check_interval is larger than the number of steps")
    model, datamodule = member.model, member.datamodule
    model.load_state_dict(member.best_state)
    epoch = (member.best_step - 1) // member.steps_per_epoch
    for step, values in member.validations:
        member.logger.log_metrics(values, step - 1)
    write_hparams_row(directory, member.hparams_row)
    trained_to = [LogAtTrainedStep(member.best_step), TrainedTo(member.best_step, epoch)]
    tester = Trainer(
        logger=member.logger,
        callbacks=[*scoring_callbacks(datamodule, model), *trained_to],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator=accelerator,
        devices=1,
    )
    tester.test(model, datamodule=datamodule, verbose=False)
    report("test", tester, model)
    member.logger.finalize("success")
    values = {"epoch": epoch, "step": member.best_step, MONITOR: member.best_loss}
    name = checkpoint_filename(MONITOR).format(**values) + ".ckpt"
    folder = directory / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(
        folder / name, lambda tmp: tester.save_checkpoint(tmp, weights_only=False)
    )  # the whole state
    print(f"Best checkpoint: {folder / name} ({MONITOR}={member.best_loss:.5g})")
    return {key: float(value) for key, value in tester.callback_metrics.items() if key.startswith("test/")}


def stackable(config: Any, built: Any) -> str | None:
    """Why a run cannot join a stack, judged on its parsed ``config`` and what it ``built`` (its model and
    data module); ``None`` if it can. Its network is judged on data, by :func:`forward_problem`."""
    trainer = config.trainer
    model = built.model
    if model.lr_scheduler is not None:
        scheduler = model.lr_scheduler(model.optimizer([nn.Parameter(torch.zeros(1))]))
        if isinstance(scheduler, ReduceLROnPlateau):
            return "its learning-rate scheduler follows its own validation loss (ReduceLROnPlateau)"
    if not isinstance(built.data, InMemoryDataModule):
        return "its data module does not hold its data in memory"
    if config.checkpoint.get("monitor") != MONITOR or config.checkpoint.get("mode") != "min":
        return f"its best checkpoint is chosen by another metric than {MONITOR}'s minimum"
    if trainer.get("callbacks"):
        return "callbacks of its own in trainer.callbacks would see the stack, not the run"
    interval = trainer.get("val_check_interval")
    if trainer.get("max_steps") not in (None, -1):
        if not isinstance(interval, int):
            return "with a budget in steps, it validates at a fraction of an epoch, not every N steps"
    elif not isinstance(trainer.get("max_epochs"), int) or trainer.get("max_epochs") < 1:
        return "its budget is neither a number of steps nor a number of epochs"
    elif not (interval is None or (isinstance(interval, float) and interval == 1.0)):
        return "with a budget in epochs, it validates within an epoch (trainer.val_check_interval)"
    settings = {
        "strategy": ("auto",),
        "devices": ("auto", 1, "1"),
        "num_nodes": (1,),
        "accumulate_grad_batches": (1,),
        "gradient_clip_val": (None, 0, 0.0),
        "precision": (None, "32-true", "32", 32),
    }
    for key, allowed in settings.items():
        if trainer.get(key) not in allowed:
            return f"trainer.{key}={trainer.get(key)} is not supported in a stack"
    return None


def member_of(cli: Any, args: list[str], name: str, save_dir: str) -> Member:
    """Build one member from a ``fit``'s arguments (without the subcommand), with the parser of ``cli``:
    seeded, then data module and model instantiated, exactly as ``binclf fit`` does."""
    from lightning.pytorch import seed_everything

    config = cli.parser.parse_args(args)
    seed_everything(config.seed_everything, verbose=False)
    built = cli.instantiated(config)
    logger = RunLogger(save_dir, name="", version=name, default_hp_metric=False, max_queue=LOGGED_POINTS)
    return Member(name, built.data, built.model, logger, hparams_row(config, built.model.hparams))
