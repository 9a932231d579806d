"""Checkpoint files: written whole or not at all, read as plain data only, and found for a fresh process.

Plain LightningCLI evaluates the untrained model when given no ``--ckpt_path`` (or ``last``), and cannot
resolve ``best`` outside the process that ran ``fit``. Here both come from the files a fit run leaves.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

_VERSION = re.compile(r"version_(\d+)")


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` to a temporary file beside ``path``, then rename it over ``path``: a process killed
    mid-write leaves the old file whole, never a torn one. The name carries the process id, so processes
    writing the same file never share a temporary one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted or read, with a message that names it."""


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint as plain data (``weights_only=True``): tensors, numbers, strings and containers.

    A checkpoint that holds any other object is refused before that object is built, so a crafted file
    cannot run code here. A file cut short or damaged is reported as such, never half-read.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1])
        if "GLOBAL" in detail:
            raise CheckpointError(
                f"refused to load checkpoint {path}: it holds an object that is not plain data, and building "
                f"it could run code ({detail})"
            ) from error
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint ({detail})") from error
    except Exception as error:  # a torn zip archive surfaces as RuntimeError, OSError or KeyError
        reason = (str(error).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"checkpoint {path} is incomplete or damaged ({type(error).__name__}: {reason})"
        ) from error


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, made safe for files on local disk.

    - Save: :func:`atomic_write`. A process killed mid-write leaves the previous checkpoint whole (and
      a stray ``.tmp`` file). No fsync: this guards against a killed process, not against a power cut.
    - Load: :func:`load_checkpoint`, plain data only.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        # ``weights_only`` is ignored on purpose: every load here is plain data only.
        return load_checkpoint(path, map_location=map_location or (lambda storage, loc: storage))


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
    """The best checkpoint recorded in ``directory/last.ckpt`` by a ModelCheckpoint that monitors a metric;
    else the newest file."""
    last = directory / "last.ckpt"
    if last.is_file():
        state = load_checkpoint(last)
        for key, callback_state in state.get("callbacks", {}).items():
            monitors = key.startswith("ModelCheckpoint") and callback_state.get("monitor")
            if monitors and callback_state.get("best_model_path"):
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


def claim_run_dir(root: Path) -> int:
    """Create the next free ``root/version_N`` and return ``N``.

    ``mkdir`` fails when another process has just made the same folder, so runs started at the same moment
    in the same place each get their own folder, where a logger that picks ``N`` by listing would give
    both the same one.
    """
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(match.group(1)) for p in root.iterdir() if (match := _VERSION.fullmatch(p.name))]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"version_{version}").mkdir()
            return version
        except FileExistsError:
            version += 1


def run_version(checkpoint: Path, root: Path) -> int | None:
    """``N`` when ``checkpoint`` lies in ``root/version_N/checkpoints``: the run it belongs to."""
    run = checkpoint.resolve().parent.parent
    match = _VERSION.fullmatch(run.name)
    if match and checkpoint.resolve().parent.name == "checkpoints" and run.parent == root.resolve():
        return int(match.group(1))
    return None
