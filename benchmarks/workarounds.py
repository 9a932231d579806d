"""What each workaround of a library internal would buy (``src/binclf/workarounds.py``): the measurement
behind keeping or dropping each.

The rule: keep a workaround only if it saves at least 2 % of a default ``binclf fit``, or at least 0.3 s of
every command's start or end.

A whole fit varies by more than these savings from one run to the next on a shared machine, so the savings
inside a fit are measured as (how often Lightning does the thing in one default fit, counted) x (what each
time costs with and without the workaround, timed in a tight loop), and set against the fit's CPU time.
The end is timed directly: wall times of whole commands, in interleaved rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.profilers import PassThroughProfiler

import binclf.cli
from binclf.cli import run_command
from binclf.main import prepare_process
from binclf.module import BinaryClassifier
from binclf.monitoring.predictions import PredictionWriter
from binclf.networks import MLP
from binclf.workarounds import NullProfiler

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
BINCLF = str(Path(sys.executable).parent / "binclf")
FIT = ["fit", "-c", str(CONFIG), "--trainer.enable_progress_bar=false"]


class CountingProfiler(NullProfiler):
    calls = 0

    def profile(self, action_name: str) -> contextlib.nullcontext:
        CountingProfiler.calls += 1
        return super().profile(action_name)


class CountingWriter(PredictionWriter):
    """The predictions writer, counting the hooks Lightning dispatches to it during a fit."""

    dispatches = 0

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_") or name in ("setup", "teardown"):
            CountingWriter.dispatches += 1
        return super().__getattribute__(name)


class CountingModule(BinaryClassifier):
    """The model, counting how often Lightning sets the name of the hook it is running."""

    sets = 0

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_current_fx_name":
            CountingModule.sets += 1
        super().__setattr__(name, value)


@contextlib.contextmanager
def patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    had, saved = name in vars(owner), vars(owner).get(name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if had:
            setattr(owner, name, saved)
        else:
            delattr(owner, name)


def fit(root: str) -> float:
    """One default fit in this process; its CPU time (one torch thread: the work it does)."""
    start = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run_command([*FIT, f"--trainer.default_root_dir={root}"])
    return time.process_time() - start


def per_call(statement: Callable[[], object], number: int = 100_000) -> float:
    """Seconds per call of ``statement``: the best of five tight loops."""
    return min(timeit.repeat(statement, number=number, repeat=5)) / number


def in_fit_savings(root: str) -> tuple[float, dict[str, tuple[int, float]]]:
    """The fit's CPU time, and per workaround (count in one fit, seconds saved per occurrence)."""
    with (
        patched(binclf.cli, "NullProfiler", CountingProfiler),
        patched(binclf.cli, "PredictionWriter", CountingWriter),
        patched(binclf.cli, "BinaryClassifier", CountingModule),
    ):
        cpu = fit(root)
    lightning_profiler, null_profiler = PassThroughProfiler(), NullProfiler()
    action = "[LightningModule]BinaryClassifier.training_step"

    def profiled(profiler: PassThroughProfiler) -> Callable[[], None]:
        def step() -> None:
            with profiler.profile(action):
                pass

        return step

    writer, hook = PredictionWriter(), Callback.on_train_batch_start.__name__

    def dispatch() -> None:  # what Lightning does for one callback and one hook (trainer.call)
        fn = getattr(writer, hook)
        if callable(fn):
            with lightning_profiler.profile(f"[Callback]{writer.state_key}.{hook}"):
                fn(None, None, None, 0)

    model = BinaryClassifier(MLP())
    return cpu, {
        "NullProfiler": (
            CountingProfiler.calls,
            per_call(profiled(lightning_profiler)) - per_call(profiled(null_profiler)),
        ),
        "callbacks only where they act (dropped)": (CountingWriter.dispatches, per_call(dispatch)),
        "hook names stored past nn.Module (deleted)": (
            CountingModule.sets,
            per_call(lambda: model.__setattr__("_current_fx_name", "x"))
            - per_call(lambda: object.__setattr__(model, "_current_fx_name", "x")),
        ),
    }


def command_seconds(command: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the start and end timings")
    args = parser.parse_args()
    prepare_process()
    with tempfile.TemporaryDirectory() as root:
        fit(root)  # imports and first-call costs, outside the measurements
        cpu, counted = in_fit_savings(root)
        end: list[float] = []
        short = [*FIT, "--trainer.max_epochs=1"]
        normal_exit = [
            sys.executable,
            "-c",
            "import sys; from binclf.main import cli_main; cli_main(sys.argv[1:])",
        ]
        for _ in range(args.rounds):
            # The same command, ending through the console script or through a normal interpreter exit.
            end.append(
                command_seconds([*normal_exit, *short], root) - command_seconds([BINCLF, *short], root)
            )
    print(f"default binclf fit in this process: {cpu:.2f} s of CPU")
    print(f"{'workaround':<44}{'count':>9}{'µs each':>9}{'saves (s)':>11}{'% of fit':>10}")
    results = {"fit_cpu_seconds": round(cpu, 3)}
    for name, (count, seconds) in counted.items():
        saved = count * seconds
        results[name] = round(saved, 3)
        print(f"{name:<44}{count:>9}{1e6 * seconds:>9.2f}{saved:>11.3f}{100 * saved / cpu:>10.1f}")
    for name, values in [("exit without teardown (end)", end)]:
        results[name] = round(statistics.median(values), 3)
        rounds = " ".join(f"{v:+.2f}" for v in values)
        print(f"{name:<44}{'':>9}{'':>9}{statistics.median(values):>11.3f}{'':>10}   rounds {rounds}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
