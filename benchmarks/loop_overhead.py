"""Target 2: Lightning's training-loop cost per step against the floor, a bare loop over the same batches.

Both run in this process on the article's data and network (70 epochs of 79 steps, one torch thread):

- floor: a plain PyTorch loop over binclf's in-memory batches (the same shuffles), no Lightning;
- Lightning, loop only: ``Trainer.fit`` with validation, logging, checkpoints and progress bar off;
- binclf fit: the whole command ``binclf fit -c configs/default.yaml`` run in this process (parsing,
  building, validation every epoch, TensorBoard, checkpoints, progress bar and figures), its output
  discarded.

    python benchmarks/loop_overhead.py [--epochs 70]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from binclf.cli import run_command
from binclf.data import TwoGaussianDataModule
from binclf.main import prepare_process
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
        loader.order.set_epoch(epoch)
        for batch in loader:
            optimizer.zero_grad()
            loss, _, _ = model.model_step(batch)
            loss.backward()
            optimizer.step()
            steps += 1
    return time.perf_counter() - start, steps


def lightning(datamodule: TwoGaussianDataModule, epochs: int, root: str) -> tuple[float, int]:
    seed_everything(0, verbose=False)
    model = BinaryClassifier(MLP())
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    return time.perf_counter() - start, trainer.global_step


def binclf_fit(epochs: int, root: str) -> tuple[float, int]:
    config = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    args = ["fit", "-c", str(config), f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={root}"]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli = run_command(args)
    return time.perf_counter() - start, cli.trainer.global_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=70)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prepare_process()
    warnings.filterwarnings("ignore", message=".*does not have many workers")
    datamodule = TwoGaussianDataModule()
    datamodule.setup("fit")

    results = {}
    with tempfile.TemporaryDirectory() as root:
        results["floor (bare loop, same batches)"] = floor(datamodule, args.epochs)
        results["Lightning, loop only"] = lightning(datamodule, args.epochs, root)
        results["binclf fit, whole command"] = binclf_fit(args.epochs, root)
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
