"""Checkpoint files: written whole or not at all, read as plain data only, and found for a fresh process.

Plain LightningCLI evaluates the untrained model when given no ``--ckpt_path`` (or ``last``), and cannot
resolve ``best`` outside the process that ran ``fit``. Here both come from the files a fit run leaves.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
import shutil
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
    """Read a checkpoint as plain data (``weights_only=True``): tensors, numbers, strings and containers,
    shaped as Lightning writes them (a dict with its version key and a ``state_dict`` of tensors).

    A checkpoint that holds any other object is refused before that object is built, so a crafted file
    cannot run code here. A file cut short or damaged is reported as such, never half-read. What the
    checkpoint *names* (its hyperparameters) is checked separately, by :func:`check_hyperparameters`.
    """
    state = _unpickle(path, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning checkpoint: it holds a {type(state).__name__}"
        )
    for key, kind in [("pytorch-lightning_version", str), ("state_dict", dict)]:
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint: it has no {key!r}")
    for name, tensor in state["state_dict"].items():
        if not isinstance(tensor, torch.Tensor):
            kind = type(tensor).__name__
            raise CheckpointError(
                f"checkpoint {path} is damaged: state_dict[{name!r}] is a {kind}, not a tensor"
            )
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        if not isinstance(state.get(key, {}), dict):
            raise CheckpointError(f"checkpoint {path}: {key} is a {type(state[key]).__name__}, not a mapping")
    return state


def _unpickle(path: str | Path, map_location: Any) -> Any:
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


# What LightningCLI stores beside a model's settings; it removes the key before parsing the rest.
_INSTANTIATOR = ("_instantiator", "lightning.pytorch.cli.instantiate_module")
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def check_hyperparameters(
    hyperparameters: dict[str, Any], path: str | Path, *, settings: set[str], trusted_classes: set[str]
) -> None:
    """Refuse checkpoint hyperparameters that could make LightningCLI import or build code.

    LightningCLI parses a checkpoint's ``hyper_parameters`` as if they were a config file that the user
    wrote, and jsonargparse imports and builds whatever class or function they name. A checkpoint may come
    from anyone, so before that happens every value must be one of:

    - plain data: ``None``, a number, a boolean, a string, or a list of these;
    - at the top level only (one of the model's ``settings``), a class given as ``class_path`` (one of
      ``trusted_classes``) with ``init_args`` of plain data: no class nested inside another.

    A string that reads as a dotted name of an importable module (``os.system``) is refused too, since an
    argument typed as a callable would import and call it. Nothing is imported here: importability is
    looked up with ``importlib.util.find_spec`` on the top-level name only, which runs no module code.
    """

    def refuse(key: str, why: str) -> CheckpointError:
        return CheckpointError(f"refused checkpoint {path}: hyper_parameters.{key} {why}")

    def plain(value: Any, key: str) -> None:
        if value is None or isinstance(value, (bool, int, float)):
            return
        if isinstance(value, str):
            if _DOTTED_NAME.fullmatch(value) and importlib.util.find_spec(value.split(".")[0]) is not None:
                raise refuse(key, f"is {value!r}, the name of something importable, which could run code")
            return
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                plain(item, f"{key}[{i}]")
            return
        if isinstance(value, dict) and ("class_path" in value or "_class_path" in value):
            raise refuse(key, "is a class nested inside another class's arguments, which could run code")
        raise refuse(
            key, f"is a {type(value).__name__}; only numbers, strings, booleans and lists are allowed"
        )

    for key, value in hyperparameters.items():
        if (key, value) == _INSTANTIATOR:
            continue
        if key not in settings:
            raise refuse(key, "is not a setting of the model")
        if not isinstance(value, dict):
            plain(value, key)
            continue
        class_path = value.get("class_path")
        if class_path not in trusted_classes:
            raise refuse(
                f"{key}.class_path",
                f"is {class_path!r}, which is not among the classes binclf builds from a checkpoint "
                "(its own networks and data modules, torch.optim optimizers and LR schedulers, and the "
                "classes named in this command's config)",
            )
        for part, arguments in value.items():
            if part == "class_path":
                continue
            if part not in ("init_args", "dict_kwargs") or not isinstance(arguments, dict):
                raise refuse(f"{key}.{part}", "is not part of a class's settings (class_path, init_args)")
            for name, argument in arguments.items():
                plain(argument, f"{key}.{part}.{name}")


def changed_data_settings(checkpoint: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """How the data settings of a parsed config (``class_path`` and ``init_args``) differ from those a
    checkpoint was trained with, one ``"data.key: old in the checkpoint, new now"`` per setting."""
    stored = {
        k: v for k, v in checkpoint.get("datamodule_hyper_parameters", {}).items() if k != "_instantiator"
    }
    stored_class = stored.pop("_class_path", data.get("class_path"))
    if stored_class != data.get("class_path"):
        return [f"data: {stored_class} in the checkpoint, {data.get('class_path')} now"]
    now = data.get("init_args") or {}

    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    return [
        f"data.{key}: {stored[key]!r} in the checkpoint, {now[key]!r} now"
        for key in sorted(stored.keys() & now.keys())
        if plain(stored[key]) != plain(now[key])
    ]


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
        try:
            atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
        except RuntimeError:  # torch reports a failed write (a full disk, say) as a RuntimeError
            free = shutil.disk_usage(path.parent).free
            raise OSError(f"could not write checkpoint {path} ({free:,} bytes free on its disk)") from None

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
