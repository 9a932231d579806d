"""How long the commands take to answer when they have nothing to train: ``binclf --version``,
``binclf --help``, ``binclf fit --help`` and ``binclf-sweep --help``, whole processes, the median of
``--repeats`` runs each.

    python benchmarks/startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = {
    "binclf --version": [str(BIN / "binclf"), "--version"],
    "binclf --help": [str(BIN / "binclf"), "--help"],
    "binclf fit --help": [str(BIN / "binclf"), "fit", "--help"],
    "binclf-sweep --help": [str(BIN / "binclf-sweep"), "--help"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seconds = {}
    for name, command in COMMANDS.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run(command, capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        seconds[name] = statistics.median(times)
        print(f"{name:<24}{seconds[name]:>8.2f} s")
    print(json.dumps({"seconds": {name: round(value, 3) for name, value in seconds.items()}}))


if __name__ == "__main__":
    main()
