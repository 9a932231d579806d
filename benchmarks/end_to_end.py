"""Target 1: the whole ``binclf fit -c configs/default.yaml`` process against the whole bare-loop process.

binclf keeps everything a user gets on (per-epoch validation, TensorBoard, checkpoints, figures); the bare
loop (``benchmarks/plain_loop.py``) has none of it. The two run interleaved, ``--repeats`` times each and
in turns that start with each command in rotation, so that a slow spell of the machine hits both.
Reports median wall times and the median of the pairwise ratio binclf / bare loop. Target: ratio <= 1.0.

    python benchmarks/end_to_end.py [--repeats 3] [--reference OTHER_LOOP.py] [--baseline OTHER_SRC]

``--reference`` times another bare-loop script in the same way, e.g. to check that the baseline here is
as fast as the one it was written from. ``--baseline`` times ``binclf fit`` from another checkout's
``src`` folder in the same rounds (a change against the commit before it, say): on a shared machine only
commands timed in the same rounds compare. Besides wall time, each process's CPU time (user and system)
is reported, which a busy neighbour disturbs less.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINCLF = str(Path(sys.executable).parent / "binclf")


def timed(command: list[str], cwd: Path, env: dict[str, str] | None) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user and system) and output of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False, env=env)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, cpu, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", type=Path, help="another bare-loop script to time the same way")
    parser.add_argument("--baseline", type=Path, help="another checkout's src folder: its binclf fit, too")
    args = parser.parse_args()

    fit = [BINCLF, "fit", "-c", str(ROOT / "configs" / "default.yaml")]
    commands = {"binclf fit": fit, "bare loop": [sys.executable, str(ROOT / "benchmarks" / "plain_loop.py")]}
    environments: dict[str, dict[str, str] | None] = dict.fromkeys(commands)
    if args.reference:
        commands["reference loop"] = [sys.executable, str(args.reference.resolve())]
        environments["reference loop"] = None
    if args.baseline:
        commands["baseline fit"] = fit
        environments["baseline fit"] = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())}
    times: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    accuracy: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            # Each round starts with another command, so that no command always runs on a machine just
            # warmed up (or slowed down) by the same neighbour.
            names = list(commands)
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                seconds, cpu_seconds, out = timed(commands[name], Path(scratch), environments[name])
                times[name].append(seconds)
                cpu[name].append(cpu_seconds)
                if name.endswith("loop"):
                    accuracy[name] = json.loads(out.strip().splitlines()[-1])["accuracy"]

    ratios = [a / b for a, b in zip(times["binclf fit"], times["bare loop"], strict=True)]
    print(f"{'process':<16}{'median s':>10}{'CPU s':>8}   all runs (s)")
    for name, values in times.items():
        runs = " ".join(f"{v:.2f}" for v in values)
        print(f"{name:<16}{statistics.median(values):>10.2f}{statistics.median(cpu[name]):>8.2f}   {runs}")
    print(f"median ratio binclf fit / bare loop: {statistics.median(ratios):.2f}  (target <= 1.0)")
    if args.baseline:
        against = [a / b for a, b in zip(times["binclf fit"], times["baseline fit"], strict=True)]
        print(f"median ratio binclf fit / baseline fit: {statistics.median(against):.2f}")
    for name, value in accuracy.items():
        print(f"{name} test accuracy: {value:.5f}")
    summary = {
        "median_seconds": {name: round(statistics.median(v), 3) for name, v in times.items()},
        "median_cpu_seconds": {name: round(statistics.median(v), 3) for name, v in cpu.items()},
        "median_ratio": round(statistics.median(ratios), 3),
        "accuracy": accuracy,
        "repeats": args.repeats,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
