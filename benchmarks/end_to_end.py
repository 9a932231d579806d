"""Target 1: the whole ``binclf fit -c configs/default.yaml`` process against the whole bare-loop process.

binclf keeps everything a user gets on (per-epoch validation, TensorBoard, checkpoints, figures); the bare
loop (``benchmarks/plain_loop.py``) has none of it. The two run interleaved, ``--repeats`` times each and
in turns that start with each command in rotation, so that a slow spell of the machine hits both.
Reports median wall times and the median of the pairwise ratio binclf / bare loop. Target: ratio <= 1.0.

    python benchmarks/end_to_end.py [--repeats 3] [--reference OTHER_LOOP.py]

``--reference`` times another bare-loop script in the same way, e.g. to check that the baseline here is
as fast as the one it was written from.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINCLF = str(Path(sys.executable).parent / "binclf")


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", type=Path, help="another bare-loop script to time the same way")
    args = parser.parse_args()

    commands = {
        "binclf fit": [BINCLF, "fit", "-c", str(ROOT / "configs" / "default.yaml")],
        "bare loop": [sys.executable, str(ROOT / "benchmarks" / "plain_loop.py")],
    }
    if args.reference:
        commands["reference loop"] = [sys.executable, str(args.reference.resolve())]
    times: dict[str, list[float]] = {name: [] for name in commands}
    accuracy: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            # Each round starts with another command, so that no command always runs on a machine just
            # warmed up (or slowed down) by the same neighbour.
            names = list(commands)
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                command = commands[name]
                seconds, out = timed(command, Path(scratch))
                times[name].append(seconds)
                if name != "binclf fit":
                    accuracy[name] = json.loads(out.strip().splitlines()[-1])["accuracy"]

    ratios = [a / b for a, b in zip(times["binclf fit"], times["bare loop"], strict=True)]
    print(f"{'process':<16}{'median s':>10}   all runs (s)")
    for name, values in times.items():
        print(f"{name:<16}{statistics.median(values):>10.2f}   " + " ".join(f"{v:.2f}" for v in values))
    print(f"median ratio binclf fit / bare loop: {statistics.median(ratios):.2f}  (target <= 1.0)")
    for name, value in accuracy.items():
        print(f"{name} test accuracy: {value:.5f}")
    summary = {
        "median_seconds": {name: round(statistics.median(v), 3) for name, v in times.items()},
        "median_ratio": round(statistics.median(ratios), 3),
        "accuracy": accuracy,
        "repeats": args.repeats,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
