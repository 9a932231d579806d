"""Many small classifiers trained at once: the study's runs that differ only in their data and seeds, as one
stack of K networks that takes every optimizer step together.

A 4 K-parameter network is too small to keep a core busy, and Lightning's machinery costs as much per step
as its arithmetic. Stacked, layer ``l`` of all K members is one weight tensor ``[K, in, out]`` and one
batched matrix product (``torch.baddbmm``), and Lightning's cost per step is shared by K members.

The members stay independent, each exactly as its solo run (``binclf fit`` with the same arguments) would be:

- its data: the same draws, splits and per-epoch shuffles, from its own data module. Each member steps
  through its own epochs; a last batch that is short is padded, and the padding masked out of the loss;
- its initial weights: its network is built by the CLI right after seeding with its seed, as in the solo run;
- its loss: the mean over its own samples. The stack's loss is the *sum* of the members' losses, so each
  member's gradient is that of its own loss alone, and an element-wise optimizer (SGD with or without
  momentum, Adam, AdamW) updates each member as it would alone;
- its validation, on its own validation set and schedule, and its best weights (lowest validation loss);
- its test, of its best weights against its own Bayes rule, through the same ``BinaryClassifier`` test code
  as a solo run, and its outputs: ``result.json``, TensorBoard scalars and a checkpoint that
  ``binclf test --ckpt_path`` accepts.

Runs stack when they share everything but data settings and seeds (network, optimizer, batch size, budget);
:func:`stackable` says why a run cannot (another network, a learning-rate scheduler, which would couple the
members, several devices).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from binclf.data import InMemoryDataModule
from binclf.data.batches import EpochBatchSampler
from binclf.module import BinaryClassifier
from binclf.monitoring.tensorboard import LogAtTrainedStep, hparams_row, write_hparams_row

LOOPS = ("fit_loop", "validate_loop", "test_loop", "predict_loop")  # what Lightning's checkpoints hold


def linear_chain(network: nn.Module) -> list[tuple[str, nn.Linear]] | None:
    """The network's linear layers with their names, if it is ``Linear (ReLU Linear)*`` as binclf's MLP and
    LogisticRegression are; ``None`` for any other network, which trains solo."""
    leaves = [(name, module) for name, module in network.named_modules() if not list(module.children())]
    kinds = [nn.Linear if i % 2 == 0 else nn.ReLU for i in range(len(leaves))]
    if (
        not leaves
        or len(leaves) % 2 == 0
        or any(type(m) is not k for (_, m), k in zip(leaves, kinds, strict=True))
    ):
        return None
    return [(name, module) for name, module in leaves if isinstance(module, nn.Linear)]


class StackedNetwork(nn.Module):
    """K networks of one ``Linear (ReLU Linear)*`` shape as one module: layer ``l``'s weights are
    ``[K, in, out]`` and its biases ``[K, 1, out]``; inputs are ``[K, n, in]``, logits ``[K, n, 1]``."""

    def __init__(self, networks: list[nn.Module]) -> None:
        super().__init__()
        chains = [linear_chain(network) for network in networks]
        self.names = [name for name, _ in chains[0]]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([chain[layer][1].weight.detach().T for chain in chains]).contiguous())
            for layer in range(len(self.names))
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([chain[layer][1].bias.detach()[None, :] for chain in chains]))
            for layer in range(len(self.names))
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(bias, x, weight)
            if layer + 1 < len(self.weights):
                x = torch.relu(x)
        return x

    def member_state(self, k: int) -> dict[str, Tensor]:
        """Member ``k``'s weights under its own network's names (``layers.0.weight``, ...)."""
        state = {}
        for name, weight, bias in zip(self.names, self.weights, self.biases, strict=True):
            state[f"{name}.weight"] = weight[k].detach().T.clone()
            state[f"{name}.bias"] = bias[k, 0].detach().clone()
        return state


@dataclass
class Member:
    """One run of the stack: its data, its model as the CLI built it (initial weights, hyperparameters,
    optimizer), its TensorBoard logger, and what the stack learns about it."""

    name: str
    datamodule: InMemoryDataModule
    model: BinaryClassifier
    logger: TensorBoardLogger
    hparams_row: dict[str, Any]
    steps_per_epoch: int = 0
    best_loss: float = math.inf
    best_step: int = 0
    best_state: dict[str, Tensor] = field(default_factory=dict)
    best_accuracy: float = -math.inf
    failure: str | None = None
    validations: list[tuple[int, float, float, float]] = field(default_factory=list)  # step, loss, acc, best


class StackedBatches:
    """Each optimizer step's batches of all members, ``(features [K, B, d], targets [K, B, 1], mask [K, B])``:
    member ``k``'s rows are the batch its solo run would take at that step (its own epochs, its own
    per-epoch shuffle), padded to the batch size; the mask marks real rows."""

    def __init__(
        self, members: list[Member], batch_size: int, steps: int, device: str | torch.device = "cpu"
    ) -> None:
        self.members, self.batch_size, self.steps, self.device = (
            members,
            batch_size,
            steps,
            torch.device(device),
        )
        # On the device once, as a solo run's in-memory batches are: no step copies data from the host.
        self.sets = [
            type(member.datamodule.train_set)(*(t.to(self.device) for t in member.datamodule.train_set))
            for member in members
        ]
        self.samplers = [
            EpochBatchSampler(len(data.features), batch_size, shuffle=True, seed=member.datamodule.seed)
            for member, data in zip(members, self.sets, strict=True)
        ]
        for member, sampler in zip(members, self.samplers, strict=True):
            member.steps_per_epoch = len(sampler)

    def __len__(self) -> int:
        return self.steps

    def _member_batches(self, k: int) -> Iterator[Tensor]:
        sampler, epoch = self.samplers[k], 0
        while True:
            sampler.set_epoch(epoch)
            order = sampler.shard()
            for start, stop in sampler.batch_bounds(len(order)):
                yield order[start:stop]
            epoch += 1

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        streams = [self._member_batches(k) for k in range(len(self.members))]
        dim = self.sets[0].features.shape[1]
        for _ in range(self.steps):
            features = torch.zeros(len(streams), self.batch_size, dim, device=self.device)
            targets = torch.zeros(len(streams), self.batch_size, 1, device=self.device)
            mask = torch.zeros(len(streams), self.batch_size, device=self.device)
            for k, stream in enumerate(streams):
                rows = next(stream).to(self.device)
                data, member = self.sets[k], self.members[k]
                features[k, : len(rows)] = member.datamodule.transform(data.features[rows])
                targets[k, : len(rows)] = data.targets[rows]
                mask[k, : len(rows)] = 1.0
            yield features, targets, mask


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


class StackedClassifier(LightningModule):
    """Trains the members' networks as one :class:`StackedNetwork` with their shared optimizer settings.

    Validation runs every ``val_every`` steps on each member's whole validation set; each member keeps the
    weights of its lowest validation loss. ``log_every`` is the solo runs' ``log_every_n_steps``: the
    training loss of each member is kept at those steps, for its TensorBoard curve.
    """

    def __init__(
        self, members: list[Member], val_every: int, log_every: int, batch_size: int, steps: int
    ) -> None:
        super().__init__()
        self.members = members
        self.network = StackedNetwork([member.model.network for member in members])
        self.val_every, self.log_every, self.batch_size, self.steps = val_every, log_every, batch_size, steps
        self.train_losses: list[tuple[int, list[float]]] = []  # numbers: kept tensors would pin freed memory

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    def member_losses(self, features: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Each member's mean loss over its own real rows, ``[K]``, and the logits ``[K, n]``."""
        logits = self(features)[..., 0]
        # The module's own loss: the members share their settings, so the first member's definition is all of
        # theirs, and a LightningModule whose loss is changed is studied with that loss.
        losses = self.members[0].model.sample_losses(logits, targets[..., 0])
        return (losses * mask).sum(dim=1) / mask.sum(dim=1), logits

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        losses, _ = self.member_losses(*batch)
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            for k in torch.nonzero(~finite)[:, 0].tolist():
                member = self.members[k]
                if member.failure is None:
                    epoch, step = self.global_step // member.steps_per_epoch, self.global_step
                    member.failure = (
                        f"the training loss became {losses[k].item()} at epoch {epoch}, step {step}: "
                        "training diverged; lower the learning rate (--model.optimizer.lr)"
                    )
        if (self.global_step + 1) % self.log_every == 0:
            self.train_losses.append((self.global_step, losses.detach().tolist()))
        # The sum, not the mean: each member's gradient is its own loss's, as in its solo run. A member that
        # diverged contributes nothing more (its own weights are lost already).
        return torch.where(finite, losses, torch.zeros_like(losses)).sum()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step % self.val_every == 0:  # as the solo runs' val_check_interval
            self.validate()

    def validate(self) -> None:
        """Each member's loss and accuracy on its whole validation set; a lower loss keeps its weights."""
        features, targets, mask = _stacked_split(self.members, "val_set")
        with torch.no_grad():
            losses, logits = self.member_losses(
                features.to(self.device), targets.to(self.device), mask.to(self.device)
            )
            correct = ((torch.sigmoid(logits) > 0.5).float() == targets[..., 0].to(self.device)).float()
            accuracy = (correct * mask.to(self.device)).sum(dim=1) / mask.to(self.device).sum(dim=1)
        step = self.global_step
        for k, member in enumerate(self.members):
            loss, acc = losses[k].item(), accuracy[k].item()
            if not math.isfinite(loss):
                member.failure = member.failure or (
                    f"the validation loss became {loss} at epoch {step // member.steps_per_epoch}: training "
                    "diverged; lower the learning rate (--model.optimizer.lr)"
                )
                continue
            member.best_accuracy = max(member.best_accuracy, acc)
            if loss < member.best_loss:  # strictly lower, as ModelCheckpoint(mode="min") decides
                member.best_loss, member.best_step = loss, step
                member.best_state = self.network.member_state(k)
            member.validations.append((step, loss, acc, member.best_accuracy))

    def train_dataloader(self) -> StackedBatches:
        return StackedBatches(self.members, self.batch_size, self.steps, self.device)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.members[0].model.optimizer(self.parameters())


def train_stack(
    members: list[Member],
    *,
    steps: int,
    val_every: int,
    log_every: int,
    batch_size: int,
    accelerator: str = "cpu",
) -> StackedClassifier:
    """Fit the stack for ``steps`` optimizer steps; each member ends with its best weights and history, and
    the returned module holds the weights after the last step."""
    for member in members:
        member.datamodule.setup("fit")
    module = StackedClassifier(members, val_every, log_every, batch_size, steps)
    trainer = Trainer(
        max_steps=steps,
        max_epochs=-1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator=accelerator,
        devices=1,
    )
    trainer.fit(module)
    for step, losses in module.train_losses:
        for k, member in enumerate(members):
            member.logger.log_metrics({"train/loss": losses[k]}, step)
    return module


def finish_member(member: Member, directory: Path, accelerator: str = "cpu") -> dict[str, float]:
    """Test the member's best weights as its solo run would (BinaryClassifier's test step, against its own
    Bayes rule), write its TensorBoard curves, HParams row and best checkpoint; return its test metrics."""
    from binclf.safe_io import atomic_write

    model, datamodule = member.model, member.datamodule
    model.network.load_state_dict(member.best_state)
    model.val_acc_best.update(torch.tensor(member.best_accuracy))
    epoch = member.best_step // member.steps_per_epoch
    for step, loss, accuracy, best in member.validations:
        metrics = {"val/loss": loss, "val/acc": accuracy, "val/acc_best": best, "hp_metric": best}
        member.logger.log_metrics(metrics, step - 1)
    write_hparams_row([member.logger], member.hparams_row)
    tester = Trainer(
        logger=member.logger,
        callbacks=[LogAtTrainedStep(member.best_step, epoch)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator=accelerator,
        devices=1,
    )
    tester.test(model, datamodule=datamodule, verbose=False)
    member.logger.finalize("success")
    checkpoint = {
        "epoch": epoch,
        "global_step": member.best_step,
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": model.state_dict(),
        "hparams_name": "kwargs",
        "hyper_parameters": dict(model.hparams),
        "datamodule_hparams_name": "kwargs",
        "datamodule_hyper_parameters": dict(datamodule.hparams),
        "loops": {name: getattr(tester, name).state_dict() for name in LOOPS},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
    }
    state = datamodule.state_dict()
    if state:  # a table's label names and statistics, as a solo run keeps them
        checkpoint[type(datamodule).__qualname__] = state
    name = f"epoch={epoch}-step={member.best_step}-val_loss={member.best_loss:.4f}.ckpt"
    folder = directory / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / name, lambda tmp: torch.save(checkpoint, tmp))
    return {key: float(value) for key, value in tester.callback_metrics.items() if key.startswith("test/")}


def stackable(cli: Any) -> str | None:
    """Why the run ``cli`` built (``run_cli(..., run=False)``) cannot join a stack; ``None`` if it can."""
    trainer = cli.config.trainer
    if linear_chain(cli.model.network) is None:
        return f"its network, {type(cli.model.network).__name__}, is not a chain of Linear and ReLU layers"
    if cli.model.calibration != "none":
        return "its calibration is fitted at each validation of a run, which a stack does not run"
    if cli.model.lr_scheduler is not None:
        return "a learning-rate scheduler would step once for the whole stack"
    if not isinstance(cli.datamodule, InMemoryDataModule):
        return "its data module does not hold its data in memory"
    if cli.config.trainer.get("callbacks"):
        return "callbacks of its own in trainer.callbacks would see the stack, not the run"
    if trainer.get("max_steps") in (None, -1) or not isinstance(trainer.get("val_check_interval"), int):
        return "its budget is in epochs, whose length differs between training sizes"
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
    built = cli.parser.instantiate_classes(config)
    logger = TensorBoardLogger(save_dir, name="", version=name, default_hp_metric=False)
    return Member(name, built.data, built.model, logger, hparams_row(config, built.model.hparams))
