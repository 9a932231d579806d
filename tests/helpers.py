"""What the tests share: the default config, and the settings that shrink it so that a fit takes seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"

# The article's config, shrunk so that a fit takes a couple of seconds.
SMALL = [
    "--trainer.max_epochs=3",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=5",
    "--data.num_samples=1000",
    "--data.num_val_samples=500",
    "--data.num_test_samples=1000",
    "--data.num_predict_points=101",
    "--data.batch_size=64",
    "--model.optimizer.lr=0.1",
]


def heavy_imports(module: str, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``python -m <module> <args>``, and the torch and Lightning modules it imported, from Python's own
    import log (``-X importtime``), not from a clock."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert "binclf" in imported, result.stderr[-2000:]  # the log is there, and read right
    return result, [name for name in imported if name.split(".")[0] in ("lightning", "torch")]


def built(command: str, args: list[str]):
    """What ``binclf <command> <args>`` builds before it runs: parsed, decided and built as
    :func:`binclf.cli.run_command` does it, not run."""
    from binclf.cli import BinclfCLI, request
    from binclf.runs import RunFolder, decide

    cli = BinclfCLI(command, args)
    decision = decide(request(command, cli.config, args))
    cli.build(decision, RunFolder(decision.log_root, decision.run))
    return cli


def result_of(run, **fields) -> dict:
    """The result.json a worker writes for a run that finished, as plain as it can be."""
    return {
        "run": run.name,
        "seed": run.seed,
        **run.settings,
        "status": "ok",
        "error": "",
        "args": run.args,
        **fields,
    }
