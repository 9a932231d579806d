"""Finding the checkpoint that ``test``, ``validate`` and ``predict`` should use in a fresh process.

Plain LightningCLI evaluates the untrained model when given no ``--ckpt_path`` (or ``last``), and cannot
resolve ``best`` outside the process that ran ``fit``. Here both come from the files a fit run leaves.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

_VERSION = re.compile(r"version_(\d+)")


def latest_run_checkpoints(root: Path) -> Path | None:
    """The ``checkpoints`` folder of the newest ``version_N`` under ``root`` that holds any checkpoint.

    Folders that ``test`` and ``predict`` runs create hold no checkpoint, so they are skipped.
    """
    runs = []
    for folder in root.glob("version_*"):
        match = _VERSION.fullmatch(folder.name)
        if match and any((folder / "checkpoints").glob("*.ckpt")):
            runs.append((int(match.group(1)), folder / "checkpoints"))
    return max(runs)[1] if runs else None


def best_checkpoint(directory: Path) -> Path | None:
    """The best checkpoint recorded by ModelCheckpoint in ``directory/last.ckpt``; else the newest file."""
    last = directory / "last.ckpt"
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        for key, callback_state in state.get("callbacks", {}).items():
            if key.startswith("ModelCheckpoint") and callback_state.get("best_model_path"):
                # By name: the run directory may have moved since the absolute path was recorded.
                best = directory / Path(callback_state["best_model_path"]).name
                if best.is_file():
                    return best
    checkpoints = list(directory.glob("*.ckpt"))
    return max(checkpoints, key=lambda p: p.stat().st_mtime) if checkpoints else None


def resolve_checkpoint(request: str | None, search_root: Path, *, in_run_dirs: bool = True) -> Path:
    """Turn ``--ckpt_path`` into a file: ``None`` or ``best`` gives the best checkpoint of the latest run,
    ``last`` its ``last.ckpt``, anything else is taken as a path.

    ``search_root`` is the logger's folder of ``version_N`` runs, or, with ``in_run_dirs=False``, a
    checkpoint folder configured directly. Raises ``FileNotFoundError`` with a message for the user.
    """
    if request not in (None, "best", "last"):
        path = Path(request)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return path
    directory = latest_run_checkpoints(search_root) if in_run_dirs else search_root
    found = None
    if directory is not None and directory.is_dir():
        found = best_checkpoint(directory) if request != "last" else directory / "last.ckpt"
    if found is None or not found.is_file():
        wanted = "last.ckpt" if request == "last" else "checkpoint"
        raise FileNotFoundError(
            f"no {wanted} found under {search_root}: run `binclf fit` first, or pass --ckpt_path FILE"
        )
    return found
