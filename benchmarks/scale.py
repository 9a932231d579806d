"""Target 3: one epoch of training at 10^4 ... 10^7 samples per class: time per sample and memory.

Each size runs in a fresh process so that its peak RSS is its own. Targets: time per sample flat within
1.5x across the sizes, peak RSS within the process's baseline (after imports) plus 3x the raw bytes of
the training data (features and targets, float32), and RSS that does not grow while training. The baseline
is taken after a tiny warm-up fit, so that Lightning's fixed allocations count in it. The fit has
``binclf fit``'s per-step callback (``DiagnosticFigures``, which records every step's loss); its figures
are not timed: seconds are the data draw and the training epoch. RSS growth is the least-squares slope of
the process's RSS over the epoch's steps, past its first tenth. One torch thread; batches of
``--batch-size``.

    python benchmarks/scale.py [--sizes 10000 100000 1000000 10000000] [--batch-size 1024]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def child(num_samples: int, batch_size: int) -> None:
    """One size, in this process: data generation and one epoch of fit, then the figures as JSON."""
    import numpy as np
    import torch
    from lightning.pytorch import Callback, Trainer

    from binclf.data import TwoGaussianDataModule
    from binclf.main import prepare_process
    from binclf.module import BinaryClassifier
    from binclf.monitoring.figures import DiagnosticFigures
    from binclf.networks import MLP

    torch.set_num_threads(1)
    prepare_process()

    class Watch(Callback):
        """The RSS every 1% of the epoch's steps, and when training ends (before the figures are drawn)."""

        def __init__(self) -> None:
            self.samples: list[tuple[int, int]] = []
            self.end = 0.0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx % max(1, trainer.num_training_batches // 100) == 0:
                self.samples.append((trainer.global_step, _rss()))

        def on_train_end(self, trainer, pl_module) -> None:
            self.end = time.perf_counter()

    def fit(size: int) -> tuple[float, TwoGaussianDataModule, Watch]:
        datamodule = TwoGaussianDataModule(
            num_samples=size, batch_size=batch_size, num_val_samples=1000, num_test_samples=1000
        )
        watch = Watch()
        trainer = Trainer(
            max_epochs=1,
            accelerator="cpu",
            logger=False,
            callbacks=[DiagnosticFigures(), watch],
            default_root_dir=tempfile.mkdtemp(),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
        )
        start = time.perf_counter()
        trainer.fit(BinaryClassifier(MLP()), datamodule=datamodule)  # setup() draws the data: timed too
        return watch.end - start, datamodule, watch

    # The baseline is the process after one tiny fit, so that Lightning's own fixed allocations, which do
    # not grow with the data, count in it rather than against the data.
    fit(100)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds, datamodule, watch = fit(num_samples)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    raw = datamodule.train_set.features.nbytes + datamodule.train_set.targets.nbytes
    steps, rss = np.array(watch.samples[len(watch.samples) // 10 :], dtype=float).T
    growth = float(np.polyfit(steps, rss, 1)[0]) * 1000 if len(steps) > 2 else float("nan")
    row = {"num_samples": num_samples, "seconds": seconds, "baseline": baseline, "peak": peak, "raw": raw}
    print(json.dumps(row | {"steps": int(steps[-1]), "rss_growth_per_1000_steps": growth}))


def growth(row: dict) -> str:
    """RSS growth in kB per 1000 steps; too few steps for a slope ("—") where the epoch is shorter than
    1000 steps, since the allocations of a run's first steps then weigh in."""
    return f"{row['rss_growth_per_1000_steps'] / 1e3:.1f}" if row["steps"] >= 1000 else "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 10_000_000])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.batch_size)
        return

    rows = []
    for size in args.sizes:
        command = [sys.executable, __file__, f"--child={size}", f"--batch-size={args.batch_size}"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            sys.exit(f"size {size} failed:\n{result.stderr[-2000:]}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    per_sample = [row["seconds"] / (2 * row["num_samples"]) for row in rows]
    header = f"{'per class':>12}{'seconds':>9}{'ns/sample':>11}{'raw MB':>8}{'base MB':>9}{'peak MB':>9}"
    print(f"{header}{'(peak-base)/raw':>17}{'steps':>8}{'RSS growth kB/1000 steps':>26}")
    for row, each in zip(rows, per_sample, strict=True):
        mb = 1 / 2**20
        over = (row["peak"] - row["baseline"]) / row["raw"]
        print(
            f"{row['num_samples']:>12,}{row['seconds']:>9.2f}{1e9 * each:>11.0f}{row['raw'] * mb:>8.0f}"
            f"{row['baseline'] * mb:>9.0f}{row['peak'] * mb:>9.0f}{over:>17.2f}{row['steps']:>8,}"
            f"{growth(row):>26}"
        )
    spread = max(per_sample) / min(per_sample)
    worst = max((row["peak"] - row["baseline"]) / row["raw"] for row in rows)
    print(f"time per sample, largest / smallest: {spread:.2f} (target <= 1.5)")
    print(f"peak RSS above baseline, worst multiple of the raw data: {worst:.2f} (target <= 3)")
    # Below a few MB of data the allocator's fixed few MB dominate that multiple; what grows with the data
    # is the slope between the two largest sizes.
    first, last = rows[-2], rows[-1]
    slope = (last["peak"] - first["peak"]) / (last["raw"] - first["raw"]) if len(rows) > 1 else float("nan")
    print(f"peak RSS growth per raw byte, two largest sizes: {slope:.2f}")
    print(
        json.dumps(
            {
                "rows": rows,
                "time_per_sample_spread": round(spread, 3),
                "worst_memory_multiple": round(worst, 3),
                "memory_growth_per_raw_byte": round(slope, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
