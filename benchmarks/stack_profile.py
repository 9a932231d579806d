"""Where one stack's time goes: the default study's runs of one training size, trained as one stack in this
process under cProfile, and its time shared out by what spends it.

    python benchmarks/stack_profile.py [--steps 1000] [--members 15]

The shares are of the stack's whole time (building the members, training, testing and writing each member),
from cProfile's own time per function, grouped by the module that spends it: the batched arithmetic
(torch's operators, autograd and the optimizer), torch.func's dispatch (vmap, functional_call), Lightning's
loop around the step, the stack's own bookkeeping (batches, validation, calibration), building the members
(parsing their configs), and files (checkpoints, TensorBoard); then the largest of what is left. cProfile
slows Python code more than torch's C++ kernels, so the Python shares read high.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The first match names the share; order matters (torch.func lives inside torch, Lightning calls torch).
SHARES = [
    ("building the members: parsing configs", ("jsonargparse", "yaml", "inspect.py", "docstring_parser")),
    (
        "torch.func dispatch (vmap, functional_call)",
        ("torch/_functorch", "torch/func", "torch/nn/utils/stateless"),
    ),
    ("optimizer step", ("torch/optim",)),
    ("autograd (backward)", ("torch/autograd", "torch/_tensor.py")),
    (
        "files: checkpoints, TensorBoard",
        ("tensorboard", "torch/serialization", "safe_io", "fsspec", "zipfile"),
    ),
    ("metrics and calibration", ("torchmetrics", "binclf/calibration", "binclf/metrics")),
    ("the stack's batches and bookkeeping", ("binclf/study", "binclf/data")),
    ("Lightning's loop and hooks", ("lightning",)),
    ("torch operators (forward arithmetic)", ("torch/",)),
]


# What a function that cProfile sees only by name (C code: kernels, the autograd engine) belongs to.
C_SHARES = [
    ("autograd (backward)", ("run_backward",)),
    ("optimizer step", ("_foreach", "sgd")),
    ("torch.func dispatch (vmap, functional_call)", ("_functorch", "_vmap")),
    ("torch operators (forward arithmetic)", ("torch",)),
]


def share_of(filename: str, function: str) -> str:
    for name, parts in C_SHARES if filename == "~" else SHARES:
        if any(part in (function if filename == "~" else filename) for part in parts):
            return name
    return "Python's own built-ins" if filename == "~" else "other Python"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--members", type=int, default=15, help="runs in the stack (5 scales x 3 seeds)")
    args = parser.parse_args()

    from binclf.main import prepare_process
    from binclf.study.execute import _train_and_test_stack
    from binclf.study.plan import plan

    prepare_process()
    scales = [0.1, 0.2, 0.5, 1.0, 2.0]
    seeds = list(range(max(1, args.members // len(scales))))
    with tempfile.TemporaryDirectory() as root:
        os.chdir(root)
        sys.argv = ["binclf-sweep"]
        runs = plan(
            str(ROOT / "configs" / "default.yaml"),
            {"data.scale": scales, "data.num_samples": [1000]},
            seeds,
            ["--data.num_val_samples=2000"],
            Path(root) / "stack",
            None,
            args.steps,
        )
        for run in runs:
            run.directory.mkdir(parents=True)
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        outcomes, why_solo = _train_and_test_stack(runs)
        profiler.disable()
        seconds = time.perf_counter() - start
    if outcomes is None:
        sys.exit(f"the runs did not stack: {why_solo}")
    stats = pstats.Stats(profiler)
    shares: dict[str, float] = defaultdict(float)
    others: dict[str, float] = defaultdict(float)
    for (filename, _, function), (_, _, own, _, _) in stats.stats.items():
        shares[share_of(filename, function)] += own
        if share_of(filename, function) in ("other Python", "Python's own built-ins"):
            others[filename if filename != "~" else function] += own
    total = sum(shares.values())
    print(f"one stack: {len(runs)} members, {args.steps} steps, {seconds:.1f} s (profiled)")
    for name, value in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"  {name:<48}{100 * value / total:6.1f} %")
    for name, value in sorted(others.items(), key=lambda item: -item[1])[:5]:
        print(f"    {name[-60:]:<60}{100 * value / total:6.1f} %")


if __name__ == "__main__":
    main()
