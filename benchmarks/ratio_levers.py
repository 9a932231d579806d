"""The levers of ``configs/ratio.yaml``, one at a time: how close each brings the logit to the true llr.

Fits and tests the article's experiment (``configs/default.yaml``, full size) with raw or standardised
inputs, each calibrated by temperature and by an affine map, for each of ``--seeds`` (``seed_everything``
and ``data.seed`` together). A calibration leaves training as it was, so each run's raw figures (the
``_raw`` test metrics) are those of the same run uncalibrated: six levers from four fits per seed.

Prints, per lever, the test accuracy, its gap to the Bayes rule on the same points (and how many seeds
keep it within two of its standard errors), the
llr RMSE over |llr| ≤ 4, the efficiency (RMSE / the floor of every point the logit saw: 10,000 per class,
and a calibrated logit's 10,000 validation points per class too), the efficiency against the training-only
floor, and the logit's slope against the llr: seed 0, then the mean ± sd over the seeds.

    python benchmarks/ratio_levers.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

from binclf.cli import run_command
from binclf.main import prepare_process

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
# (inputs, calibration) of each fit
FITS = [
    ("raw x", "temperature"),
    ("raw x", "affine"),
    ("standardised x", "temperature"),
    ("standardised x", "affine"),
]
LEVERS = [
    ("article (default.yaml)", "raw x", "temperature", "_raw"),
    ("+ temperature", "raw x", "temperature", ""),
    ("+ affine", "raw x", "affine", ""),
    ("+ standardised x", "standardised x", "temperature", "_raw"),
    ("+ standardised x + temperature (ratio.yaml)", "standardised x", "temperature", ""),
    ("+ standardised x + affine", "standardised x", "affine", ""),
]
# (figure, decimals) and the headings they print under
COLUMNS = [
    ("acc", 3),
    ("gap", 3),
    ("llr_rmse", 3),
    ("efficiency", 2),
    ("efficiency_train", 2),
    ("llr_slope", 2),
]
HEADINGS = ["accuracy %", "Bayes − acc, pp", "llr RMSE", "efficiency", "eff., train floor", "llr slope"]


def fit_and_test(inputs: str, calibration: str, seed: int, root: str) -> dict[str, float]:
    args = ["-c", str(DEFAULT_CONFIG), *QUIET, f"--seed_everything={seed}", f"--data.seed={seed}"]
    args += [f"--data.standardize={inputs == 'standardised x'}", f"--model.calibration={calibration}"]
    args += [f"--trainer.default_root_dir={root}"]
    with redirect_stdout(StringIO()):
        run_command(["fit", *args])
        test = run_command(["test", *args])
    return {key: float(value) for key, value in test.trainer.callback_metrics.items()}


def figures(metrics: dict[str, float], suffix: str) -> dict[str, float]:
    acc = metrics[f"test/acc{suffix}"]
    gap = metrics["test/bayes_acc"] - acc
    # The gap's standard error is the run's; the raw figures here all come from temperature runs, whose
    # decisions are the network's own, so it is theirs too.
    return {
        "acc": 100 * acc,
        "gap": 100 * gap,
        "within_2se": float(abs(gap) <= 2 * metrics["test/acc_gap_se"]),
        "llr_rmse": metrics[f"test/llr_rmse{suffix}"],
        "efficiency": metrics[f"test/llr_efficiency{suffix}"],
        # A calibrated logit's efficiency counts the validation points; the raw logit saw the training ones.
        "efficiency_train": metrics.get(f"test/llr_efficiency{suffix}_train_floor")
        or metrics[f"test/llr_efficiency{suffix}"],
        "llr_slope": metrics[f"test/llr_slope{suffix}"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    prepare_process()
    runs: dict[tuple[str, str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(args.seeds):
            for inputs, calibration in FITS:
                root = os.path.join(scratch, f"{inputs}-{calibration}-{seed}".replace(" ", "_"))
                runs[inputs, calibration, seed] = fit_and_test(inputs, calibration, seed, root)
                print(f"fitted and tested: {inputs}, {calibration}, seed {seed}", file=sys.stderr)
    floor, seen = (runs["raw x", "temperature", 0][key] for key in ("test/llr_floor_train", "test/llr_floor"))
    print(
        f"article's data, 10,000 per class; llr RMSE floor {floor:.3f} (training points), "
        f"{seen:.3f} (and validation)"
    )
    header = f"{'lever':<45}" + "".join(f"{name:>16}" for name in HEADINGS)
    table = {
        name: [figures(runs[inputs, calibration, seed], suffix) for seed in range(args.seeds)]
        for name, inputs, calibration, suffix in LEVERS
    }
    largest_se = max(run["test/acc_gap_se"] for run in runs.values())
    print(f"standard error of the gap to Bayes: at most {100 * largest_se:.3f} pp in any run")
    print(f"seed 0\n{header}")
    for name, rows in table.items():
        print(f"{name:<45}" + "".join(f"{rows[0][column]:>16.{digits}f}" for column, digits in COLUMNS))
    if args.seeds > 1:
        print(
            f"mean ± sd over {args.seeds} seeds; last, the seeds with accuracy within 2 SE of Bayes\n{header}"
        )
        for name, rows in table.items():
            cells = []
            for column, digits in COLUMNS:
                values = [row[column] for row in rows]
                cells.append(f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}")
            within = sum(row["within_2se"] for row in rows)
            print(f"{name:<45}" + "".join(f"{cell:>16}" for cell in cells) + f"{within:>8.0f}/{len(rows)}")


if __name__ == "__main__":
    main()
