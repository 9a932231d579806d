"""Target 4: with ``--trainer.accelerator gpu`` the data lives on the device, with no host-to-device copy
per training step.

Fits the article's config for a few epochs on the GPU under the torch profiler and counts the
host-to-device memory copies: a handful per epoch (the shuffle order) is the design; one or more per step
would mean batches are copied from the host. Prints ``skipped`` and exits 0 where there is no CUDA device.

    python benchmarks/gpu.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        print(json.dumps({"skipped": True}))
        return

    from torch.profiler import ProfilerActivity, profile

    from binclf.cli import run_command
    from binclf.main import prepare_process

    prepare_process()
    command = [
        "fit",
        "-c",
        str(ROOT / "configs" / "default.yaml"),
        "--trainer.accelerator=gpu",
        "--trainer.devices=1",
        f"--trainer.max_epochs={args.epochs}",
        "--trainer.enable_progress_bar=false",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
    ]
    with tempfile.TemporaryDirectory() as root:
        command.append(f"--trainer.default_root_dir={root}")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
            start = time.perf_counter()
            cli = run_command(command)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
    steps = cli.trainer.global_step
    copies = sum(
        event.count
        for event in profiler.key_averages()
        if "memcpy" in event.key.lower() and "htod" in event.key.lower()
    )
    device = torch.cuda.get_device_name()
    print(f"device: {device}")
    print(f"training steps: {steps}, host-to-device copies: {copies} ({copies / steps:.3f} per step)")
    print(f"fit wall time under the profiler: {seconds:.1f} s")
    print(
        json.dumps(
            {"device": device, "steps": steps, "htod_copies": copies, "copies_per_step": copies / steps}
        )
    )


if __name__ == "__main__":
    main()
