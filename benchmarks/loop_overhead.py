"""Target 2: Lightning's training-loop cost per step against the floor, a bare loop over the same batches.

Both run in this process on the article's data and network (70 epochs of 79 steps, one torch thread):

- floor: a plain PyTorch loop over binclf's in-memory batches (the same shuffles), no Lightning;
- Lightning, loop only: ``Trainer.fit`` with validation, logging and checkpoints off;
- Lightning, as configured: validation every epoch, TensorBoard, checkpoints and figures, as ``binclf fit``.

    python benchmarks/loop_overhead.py [--epochs 70]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from binclf import console
from binclf.callbacks import DiagnosticFigures
from binclf.data import TwoGaussianDataModule
from binclf.module import BinaryClassifier
from binclf.networks import MLP


def floor(datamodule: TwoGaussianDataModule, epochs: int) -> tuple[float, int]:
    seed_everything(0, verbose=False)
    model = BinaryClassifier(MLP())
    optimizer = model.configure_optimizers()
    loader = datamodule.train_dataloader()
    steps = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            optimizer.zero_grad()
            loss, _, _ = model.model_step(batch)
            loss.backward()
            optimizer.step()
            steps += 1
    return time.perf_counter() - start, steps


def lightning(
    datamodule: TwoGaussianDataModule, epochs: int, configured: bool, root: str
) -> tuple[float, int]:
    seed_everything(0, verbose=False)
    model = BinaryClassifier(MLP())
    extra = (
        {"callbacks": [ModelCheckpoint(monitor="val/loss", save_last=True), DiagnosticFigures()]}
        if configured
        else {
            "logger": False,
            "enable_checkpointing": False,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
        }
    )
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        **extra,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    return time.perf_counter() - start, trainer.global_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=70)
    args = parser.parse_args()
    torch.set_num_threads(1)
    console.quiet_inapplicable_messages()
    warnings.filterwarnings("ignore", message=".*does not have many workers")
    datamodule = TwoGaussianDataModule()
    datamodule.setup("fit")

    results = {}
    with tempfile.TemporaryDirectory() as root:
        results["floor (bare loop, same batches)"] = floor(datamodule, args.epochs)
        results["Lightning, loop only"] = lightning(datamodule, args.epochs, configured=False, root=root)
        results["Lightning, as configured"] = lightning(datamodule, args.epochs, configured=True, root=root)
    base = results["floor (bare loop, same batches)"]
    base_per_step = base[0] / base[1]
    print(f"{'':<34}{'seconds':>9}{'steps':>7}{'µs/step':>9}{'ratio':>7}")
    for name, (seconds, steps) in results.items():
        per_step = seconds / steps
        print(f"{name:<34}{seconds:>9.2f}{steps:>7}{1e6 * per_step:>9.0f}{per_step / base_per_step:>7.2f}")
    print(
        json.dumps(
            {
                name: {
                    "seconds": round(s, 3),
                    "steps": n,
                    "ratio_to_floor": round((s / n) / base_per_step, 3),
                }
                for name, (s, n) in results.items()
            }
        )
    )


if __name__ == "__main__":
    main()
