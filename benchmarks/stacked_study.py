"""The studies stacked, against the same studies solo, and against the limit: a bare-torch loop doing only
the stacked arithmetic (the members' forward and backward passes and SGD steps, as batched matrix products:
no Lightning, no evaluation, no files).

    python benchmarks/stacked_study.py [--skip-solo] [--solo-default] [--only-optimizer-grid] [--repeat N]

In one run: the applicability study (``configs/sweeps/applicability.yaml``) stacked, the same grid on
``configs/ratio.yaml`` (``configs/sweeps/ratio.yaml``: standardised inputs, temperature calibration) stacked
and solo, the default study solo with ``--solo-default``, and the limit of the default study. Each study runs
as a whole ``binclf-sweep`` process (start-up, validation, test and ``results.csv`` included) with its
config's workers, in a scratch folder. The limit runs two ways, one process on every core and one
single-threaded process per core (as the study's workers run), and is the faster. Reports the wall times,
members trained per second and the ratios against their targets: the default study stacked within 1.5x of
the limit, and the ratio study stacked at least 3x faster than solo. With ``--repeat N`` the default study
and its limit are timed N times, one after the other, each ratio is printed, and their median: on a shared
machine either can be slowed for a minute, and the median is the ratio such a minute does not decide.

Then an optimizer grid, the sweep a template user runs most: 3 learning rates x 2 momenta x 2 seeds, 600
steps each, stacked and solo, with the largest difference between their test accuracies (target: stacked
in at most half the solo time, with the same results).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SWEEP = str(Path(sys.executable).parent / "binclf-sweep")


def study_seconds(config: Path, mode: str, root: str) -> float:
    start = time.perf_counter()
    command = [SWEEP, "-c", str(config), f"--mode={mode}", f"--root={root}", f"--name={mode}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return time.perf_counter() - start


OPTIMIZER_GRID = '{"model.optimizer.lr": [0.01, 0.03, 0.1], "model.optimizer.momentum": [0.0, 0.9]}'


def optimizer_grid(root: str) -> tuple[dict[str, float], float]:
    """The optimizer grid's wall time stacked and solo, and the largest difference in test accuracy between
    a run stacked and the same run solo."""
    seconds, accuracy = {}, {}
    for mode in ("stacked", "solo"):
        command = [SWEEP, f"--base_config={ROOT / 'configs' / 'default.yaml'}", f"--grid={OPTIMIZER_GRID}"]
        command += ["--seeds=[0, 1]", "--steps=600", "--args=[--data.num_val_samples=2000]"]
        command += [f"--mode={mode}", f"--root={root}", f"--name=optimizer-{mode}"]
        start = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        seconds[f"optimizer grid {mode}"] = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        with open(f"{root}/optimizer-{mode}/results.csv", newline="") as file:
            accuracy[mode] = {row["run"]: float(row["test/acc"]) for row in csv.DictReader(file)}
    difference = max(abs(accuracy["stacked"][run] - accuracy["solo"][run]) for run in accuracy["solo"])
    return seconds, difference


def limit_seconds(sizes: list[int], steps: int, batch_size: int, hidden: list[int], lr: float) -> float:
    """The stacked arithmetic alone: each step, every member's batch drawn from its own data in one batched
    gather, then forward, backward and an SGD step on ``[K, in, out]`` weights."""
    torch.manual_seed(0)
    members, longest = len(sizes), 2 * max(sizes)
    data = torch.randn(members, longest, 1)
    targets = (
        (torch.arange(longest)[None, :, None] >= torch.tensor(sizes)[:, None, None])
        .float()
        .expand(members, longest, 1)
    )
    rows = 2 * torch.tensor(sizes, dtype=torch.float32)[:, None]
    widths = [1, *hidden, 1]
    weights = [(0.1 * torch.randn(members, i, o)).requires_grad_() for i, o in itertools.pairwise(widths)]
    biases = [torch.zeros(members, 1, o, requires_grad=True) for o in widths[1:]]
    optimizer = torch.optim.SGD([*weights, *biases], lr=lr)
    start = time.perf_counter()
    for _ in range(steps):
        index = (torch.rand(members, batch_size) * rows).long()[..., None]
        h, y = data.gather(1, index), targets.gather(1, index)
        for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if layer + 1 < len(weights):
                h = torch.relu(h)
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(h, y, reduction="none")
            .mean(dim=(1, 2))
            .sum()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def _limit_on_threads(sizes: list[int], steps: int, threads: int) -> float:
    """The default study's limit for the members of ``sizes``, on ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    return limit_seconds(sizes, steps, 256, [64, 64], 0.01)


def limit_each_way(sizes: list[int], steps: int) -> dict[str, float]:
    """The limit measured two ways, as the cores can be used: one process on every core, and one
    single-threaded process per core, each with its share of the members as the study's workers have them
    (its time: the slower one's). The faster of the two is the limit."""
    cores = os.cpu_count() or 1
    one_process = _limit_on_threads(sizes, steps, cores)
    shares = [sizes[i::cores] for i in range(cores)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(cores, mp_context=context) as pool:
        per_core = max(pool.map(_limit_on_threads, shares, [steps] * cores, [1] * cores))
    return {
        f"limit, 1 process x {cores} threads": one_process,
        f"limit, {cores} processes x 1 thread": per_core,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-solo", action="store_true", help="time no solo study")
    parser.add_argument("--solo-default", action="store_true", help="time the default study solo too")
    parser.add_argument("--only-optimizer-grid", action="store_true", help="time the optimizer grid alone")
    parser.add_argument("--repeat", type=int, default=1, help="time the default study and its limit N times")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be 1 or more, got {args.repeat}")
    with tempfile.TemporaryDirectory() as root:
        grid_seconds, difference = optimizer_grid(root)
    for name, value in grid_seconds.items():
        print(f"{name:<28}{value:>9.1f} s")
    stacked, solo = grid_seconds["optimizer grid stacked"], grid_seconds["optimizer grid solo"]
    print(f"optimizer grid stacked / solo: {stacked / solo:.2f}  (target <= 0.5)")
    print(f"largest test accuracy difference, stacked against solo: {difference:.4f}")
    if args.only_optimizer_grid:
        return
    sweeps = ROOT / "configs" / "sweeps"
    study = yaml.safe_load((sweeps / "applicability.yaml").read_text())
    sizes = [
        n
        for n in study["grid"]["data.num_samples"]
        for _ in study["grid"]["data.scale"]
        for _ in study["seeds"]
    ]
    members, steps = len(sizes), study["steps"]
    timed = [("ratio study stacked", "ratio", "stacked")]
    if not args.skip_solo:
        timed.append(("ratio study solo", "ratio", "solo"))
    if args.solo_default:
        timed.append(("default study solo", "applicability", "solo"))
    seconds: dict[str, float] = {}
    ratios = []
    with tempfile.TemporaryDirectory() as root:
        for repetition in range(args.repeat):  # the default study, then its limit, as close in time as can be
            default = study_seconds(sweeps / "applicability.yaml", "stacked", f"{root}/default{repetition}")
            limits = limit_each_way(sizes, steps)
            ratios.append(default / min(limits.values()))
            if args.repeat > 1:
                each_way = ", ".join(f"{value:.1f}" for value in limits.values())
                print(f"default study stacked {default:.1f} s, limits {each_way} s: {ratios[-1]:.2f}")
        seconds["default study stacked"] = default  # in the table: the last repetition, and its limit
        for name, config, mode in timed:
            seconds[name] = study_seconds(sweeps / f"{config}.yaml", mode, f"{root}/{config}")
    seconds |= limits
    seconds["limit (bare stacked loop)"] = min(limits.values())
    print(f"{members} members, {steps} steps each, {os.cpu_count()} cores")
    print(f"{'':<28}{'seconds':>9}{'members/s':>11}")
    for name, value in seconds.items():
        print(f"{name:<28}{value:>9.1f}{members / value:>11.3f}")
    if args.repeat > 1:
        listed = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        print(f"default stacked / limit: median {statistics.median(ratios):.2f} of {listed}  (target <= 1.5)")
    else:
        print(f"default stacked / limit: {ratios[0]:.2f}  (target <= 1.5)")
    if "ratio study solo" in seconds:
        ratio = seconds["ratio study solo"] / seconds["ratio study stacked"]
        print(f"ratio study solo / stacked: {ratio:.2f}  (target >= 3)")
    if "default study solo" in seconds:
        ratio = seconds["default study solo"] / seconds["default study stacked"]
        print(f"default study solo / stacked: {ratio:.2f}")
    print(
        json.dumps(
            {
                "members": members,
                "steps": steps,
                "seconds": {k: round(v, 2) for k, v in seconds.items()},
                "default stacked / limit": [round(ratio, 3) for ratio in ratios],
            }
        )
    )


if __name__ == "__main__":
    main()
