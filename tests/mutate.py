"""``make mutate``: plausible bugs, put into a copy of the source one at a time, each run against the tests
that should catch it. A mutant is *killed* when those tests fail, and *survives* when they pass: then a bug a
user would feel goes unnoticed. The score is the share killed.

The mutants are written by hand (mutmut and cosmic-ray would run the whole suite, minutes, for each of
hundreds of mutants): the trust modules (checkpoint, paths, files written), the data modules and the study,
each mutant a bug that someone could plausibly write. The working tree is never changed: each mutant runs
in a temporary copy of ``src/``, put first on ``PYTHONPATH``.

    python tests/mutate.py            every mutant
    python tests/mutate.py lock ece   those whose name holds one of the words
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAD_INPUT = "tests/test_bad_input.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # under src/binclf
    before: str  # found exactly once in the file
    after: str
    tests: tuple[str, ...]  # pytest arguments: the tests that should catch it


MUTANTS = [
    # The checkpoint: a file from anyone.
    Mutant(
        "best_k_models path checked as a prefix of its folder",
        "checkpoint.py",
        "os.path.dirname(value) == dirpath.rstrip(os.sep)",
        "value.startswith(dirpath)",
        (BAD_INPUT, "tests/test_security.py", "-k", "checkpoint and (folder or path or delete)"),
    ),
    Mutant(
        "the meta-device check compares names only",
        "checkpoint.py",
        "if shapes != stored:",
        "if set(shapes) != set(stored):",
        (BAD_INPUT, "tests/test_security.py", "-k", "architecture or dimension or meta"),
    ),
    Mutant(
        "a calibration scale of 0 accepted",
        "checkpoint.py",
        "not (low <= scale <= high and",
        "not (0 <= scale <= high and",
        (BAD_INPUT, "tests/test_calibration.py", "-k", "calibration"),
    ),
    Mutant(
        "sparse tensors accepted",
        "checkpoint.py",
        "plain = value.layout == torch.strided and",
        "plain = value.layout in (torch.strided, torch.sparse_coo) and",
        (BAD_INPUT, "-k", "weights"),
    ),
    Mutant(
        "a NaN score in a ModelCheckpoint state accepted",
        "checkpoint.py",
        "and not torch.isnan(score).any()",
        "",
        (BAD_INPUT, "tests/test_security.py", "-k", "checkpoint"),
    ),
    # Paths and files.
    Mutant(
        "'.' taken as a folder name",
        "paths.py",
        'value in (".", "..")',
        'value == ".."',
        ("tests/study/test_sweep_inputs.py", "-k", "name"),
    ),
    Mutant(
        "a path not checked to stay inside its folder",
        "paths.py",
        "!= str(folder.resolve()):",
        "!= str(folder.resolve()) and False:",
        ("tests/study/test_sweep_inputs.py", "-k", "link"),
    ),
    Mutant(
        "a FIFO taken for a file",
        "paths.py",
        "if not stat.S_ISREG(mode):",
        "if stat.S_ISDIR(mode):",
        (BAD_INPUT, "tests/study/test_sweep_inputs.py", "-k", "FIFO or fifo"),
    ),
    Mutant(
        "a CSV cell starting with - not escaped",
        "safe_io.py",
        '("=", "+", "-", "@", "\\t", "\\r")',
        '("=", "+", "@", "\\t", "\\r")',
        ("tests/study/test_sweep_inputs.py", "-k", "formulas"),
    ),
    Mutant(
        "negative numbers escaped as formulas",
        "safe_io.py",
        "            float(text)\n",
        "            raise ValueError\n",
        ("tests/study/test_sweep_inputs.py", "-k", "formulas"),
    ),
    # The model.
    Mutant(
        "divergence checked as not NaN",
        "module.py",
        "if torch.isfinite(loss):",
        "if not torch.isnan(loss):",
        ("tests/test_module.py", "-k", "diverg"),
    ),
    Mutant(
        "test/ece from the raw probabilities",
        "module.py",
        "self.test_scores.update(torch.sigmoid(logits), targets)",
        "self.test_scores.update(torch.sigmoid(raw_logits), targets)",
        ("tests/test_calibration.py",),
    ),
    Mutant(
        "Platt targets swapped",
        "calibration.py",
        "(positives + 1) / (positives + 2), 1 / (negatives + 2)",
        "(negatives + 1) / (negatives + 2), 1 / (positives + 2)",
        ("tests/test_calibration.py",),
    ),
    # The data.
    Mutant(
        "standardisation skipped when the centre is 0",
        "data/gaussian_datamodule.py",
        "if not any(self.input_centre) and all(s == 1 for s in self.input_spread):",
        "if not any(self.input_centre):",
        ("tests/test_data.py", "-k", "standardi"),
    ),
    Mutant(
        "a spread of 1e-12 taken from a checkpoint",
        "data/in_memory.py",
        "_SPREAD_RANGE = 1e12, (1e-6, 1e12)",
        "_SPREAD_RANGE = 1e12, (1e-12, 1e12)",
        (BAD_INPUT, "-k", "spread"),
    ),
    Mutant(
        "a number past float32 in a table read as inf",
        "data/tabular.py",
        "_FLOAT32_MAX = float(np.finfo(np.float32).max)",
        "_FLOAT32_MAX = float('inf')",
        (BAD_INPUT, "-k", "float32"),
    ),
    Mutant(
        "a data seed numpy cannot take",
        "data/in_memory.py",
        "if not 0 <= seed < 2**32:",
        "if not 0 <= seed < 2**64:",
        (BAD_INPUT, "-k", "seed"),
    ),
    # The study.
    Mutant(
        "the sweep lock taken shared",
        "study/sweep.py",
        "fcntl.LOCK_EX | fcntl.LOCK_NB",
        "fcntl.LOCK_SH | fcntl.LOCK_NB",
        ("tests/study/test_sweep_inputs.py", "-k", "lock"),
    ),
    Mutant(
        "data.batch_size allowed to differ inside a stack",
        "study/plan.py",
        '_SHAPING_DATA = ("data.dim", "data.batch_size")',
        '_SHAPING_DATA = ("data.dim",)',
        ("tests/study/test_planning.py",),
    ),
    Mutant(
        "the optimizer's class allowed to differ inside a stack",
        "study/plan.py",
        '_OWN_OPTIMIZER = ("model.optimizer.", "model.lr_scheduler.")',
        '_OWN_OPTIMIZER = ("model.optimizer", "model.lr_scheduler")',
        ("tests/study/test_planning.py",),
    ),
    Mutant(
        "a group halved though no worker would sit idle",
        "study/plan.py",
        "while len(stacks) < workers:",
        "while len(stacks) <= workers:",
        ("tests/study/test_planning.py",),
    ),
    Mutant(
        "an epoch budget stacking runs of other training sizes",
        "study/plan.py",
        'shared = (*_SHAPING_DATA, "data.num_samples") if epoch_budget else _SHAPING_DATA',
        "shared = _SHAPING_DATA",
        ("tests/study/test_planning.py",),
    ),
    Mutant(
        "accumulate_grad_batches not checked by stackable",
        "study/stacked.py",
        '        "accumulate_grad_batches": (1,),\n',
        "",
        ("tests/study/test_planning.py",),
    ),
    Mutant(
        "members with other optimizer settings stepping one optimizer",
        "study/stacked.py",
        'chosen = {key: model.hparams.get(key) for key in ("optimizer", "lr_scheduler")}',
        "chosen = {}",
        ("tests/study/test_stacked_equivalence.py", "-k", "optimizer"),
    ),
    Mutant(
        "trainer.max_epochs allowed in the grid",
        "study/plan.py",
        '    "trainer.max_epochs",\n',
        "",
        ("tests/study/test_sweep_inputs.py", "-k", "setting_the_sweep"),
    ),
    Mutant(
        "max_runs checked as at least, not more than",
        "study/plan.py",
        "count > max_runs:",
        "count >= max_runs:",
        ("tests/study/test_sweep_inputs.py", "-k", "max_runs"),
    ),
    Mutant(
        "a result.json of another run published",
        "study/plan.py",
        'if recorded.get("run") != run.name or recorded.get("seed") != run.seed:',
        'if recorded.get("seed") != run.seed:',
        ("tests/study/test_sweep_inputs.py", "-k", "edited"),
    ),
    Mutant(
        "a folder the sweep did not make removed",
        "study/plan.py",
        "and not (directory / MADE_BY_THE_SWEEP).is_file()",
        "and False",
        ("tests/study/test_sweep_inputs.py", "-k", "folder"),
    ),
    Mutant(
        "a seed numpy cannot take given to a run",
        "study/plan.py",
        "_SEEDS = range(2**32)",
        "_SEEDS = range(2**64)",
        ("tests/study/test_sweep_inputs.py", "-k", "seed"),
    ),
    Mutant(
        "the optimizer state's lr used without a check",
        "runs.py",
        "if _plain(stored) != _plain(value) and not (value is None and stored is None):",
        "if False:",
        (BAD_INPUT, "-k", "resume"),
    ),
]


# A mutant can make a command wait for ever (a FIFO read as a file): its tests then never end, which
# counts as caught. Far beyond what any selection here takes.
HANG_SECONDS = 120


def run_tests(source: Path, tests: tuple[str, ...], show_failures: bool = False) -> int:
    """pytest's exit status for ``tests`` against ``source``; 1 (failed) for a run that hangs. Shows the end
    of pytest's output where it did not pass (or did not fail, which says the selection collected nothing),
    or with ``show_failures``, where it did not pass."""
    environment = {**os.environ, "PYTHONPATH": str(source)}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    try:
        result = subprocess.run(
            command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=HANG_SECONDS
        )
    except subprocess.TimeoutExpired:
        return 1
    if result.returncode not in (0, 1) or (show_failures and result.returncode != 0):
        print(result.stdout[-3000:])
    return result.returncode


def main(words: list[str]) -> int:
    chosen = [m for m in MUTANTS if not words or any(word in m.name for word in words)]
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "src"
        killed, survived, passing = [], [], set()
        for mutant in chosen:
            shutil.rmtree(source, ignore_errors=True)
            shutil.copytree(ROOT / "src", source)
            path = source / "binclf" / mutant.file
            text = path.read_text()
            if text.count(mutant.before) != 1:
                print(f"stale: {mutant.name}: {mutant.before!r} is not in {mutant.file} exactly once")
                return 2
            if mutant.tests not in passing:  # the tests must pass without the mutant, or they show nothing
                if run_tests(source, mutant.tests, show_failures=True) != 0:
                    print(f"stale: {mutant.name}: its tests fail without the mutant")
                    return 2
                passing.add(mutant.tests)
            path.write_text(text.replace(mutant.before, mutant.after))
            status = run_tests(source, mutant.tests)
            (killed if status == 1 else survived).append(mutant)
            verdict = "killed" if status == 1 else f"SURVIVED (pytest exit {status})"
            print(f"{verdict}: {mutant.name}", flush=True)
    print(f"\n{len(killed)} of {len(chosen)} mutants killed ({100 * len(killed) / len(chosen):.0f} %)")
    for mutant in survived:
        print(f"  survived: {mutant.name} ({mutant.file})")
    return 0 if not survived else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
