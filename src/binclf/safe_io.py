"""File safety: files written whole or not at all, and checkpoints read as data, never as code.

Everything binclf writes (checkpoints, figures, predictions, a sweep's results) goes through
:func:`atomic_write`; every checkpoint it reads goes through :func:`load_checkpoint`, which checks Lightning's
layout and every number Lightning restores before anything uses them. The model a checkpoint describes is
built by :mod:`binclf.from_checkpoint`.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO


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


def load_checkpoint(path: str | Path, map_location: Any = "cpu", *, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint as plain data (``weights_only=True``): tensors, numbers, strings and containers,
    in Lightning's layout, every number checked (:func:`_check_layout`).

    A checkpoint that holds any other object is refused before that object is built, so a crafted file
    cannot run code here. A file cut short or damaged is reported as such, never half-read. The model the
    checkpoint describes (its hyperparameters) is checked and built by :mod:`binclf.from_checkpoint`.
    """
    state = _unpickle(path, map_location, mmap)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning checkpoint: it holds a {type(state).__name__}"
        )
    _check_layout(state, Path(path))
    return state


# Lightning migrates a checkpoint by its version key: only from the versions binclf has run on.
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.\d+)?(?:[.+\-]?\w+)*")
_OLDEST_LIGHTNING = (2, 0)
# Steps and epochs far beyond any run, and small enough to stay exact in float64 and in every counter.
_LARGEST_COUNT = 2**53
_LOOPS = ("fit_loop", "validate_loop", "test_loop", "predict_loop")


def _check_layout(state: dict[str, Any], path: Path) -> None:
    """Lightning's checkpoint layout, checked before Lightning migrates or restores any of it: the version
    key, the counters, the loops' progress, the callbacks' state, the optimizer and scheduler states and
    the weights, each of the type Lightning writes and every number finite and in range."""

    def damaged(key: str, why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} is damaged: {key} {why}")

    version = state.get("pytorch-lightning_version")
    if not isinstance(version, str) or not isinstance(state.get("state_dict"), dict):
        missing = "pytorch-lightning_version" if not isinstance(version, str) else "state_dict"
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint: it has no {missing!r}")
    match = _VERSION.fullmatch(version)
    if match is None or (int(match[1]), int(match[2])) < _OLDEST_LIGHTNING:
        raise damaged(
            "pytorch-lightning_version", f"is {version[:40]!r}, not a Lightning version from 2.0 on"
        )
    for name, tensor in state["state_dict"].items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise damaged(f"state_dict[{name!r}]", f"is a {type(tensor).__name__}, not a tensor")
    for key in ("epoch", "global_step"):
        value = state.get(key, 0)
        if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _LARGEST_COUNT):
            raise damaged(key, f"is {value!r}"[:80] + ", not a count")
    loops = state.get("loops", {})
    if not isinstance(loops, dict) or (loops and not all(isinstance(loops.get(k), dict) for k in _LOOPS)):
        raise damaged("loops", f"lacks one of {', '.join(_LOOPS)}")
    _check_counters(loops, "loops", damaged)
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        if not isinstance(state.get(key, {}), dict):
            raise CheckpointError(f"checkpoint {path}: {key} is a {type(state[key]).__name__}, not a mapping")
    for key in ("hparams_name", "datamodule_hparams_name"):
        if not isinstance(state.get(key, ""), str):
            raise damaged(key, "is not a name")
    callbacks = state.get("callbacks", {})
    if not isinstance(callbacks, dict):
        raise damaged("callbacks", "is not a mapping")
    for key, callback_state in callbacks.items():
        if isinstance(key, str) and key.startswith("ModelCheckpoint"):
            _check_model_checkpoint_state(callback_state, f"callbacks[{key.split('{')[0]}]", damaged)
    for key in ("optimizer_states", "lr_schedulers"):
        states = state.get(key, [])
        if not isinstance(states, list) or not all(isinstance(s, dict) for s in states):
            raise damaged(key, "is not a list of states")
        for i, item in enumerate(states):
            _check_numbers(item, f"{key}[{i}]", damaged)


def _check_counters(value: Any, key: str, damaged: Callable[[str, str], Exception]) -> None:
    """Lightning's loop progress: mappings whose leaves are counts or flags."""
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                raise damaged(key, f"has a key {name!r}, not a name")
            _check_counters(item, f"{key}.{name}", damaged)
    elif not (isinstance(value, bool) or (isinstance(value, int) and 0 <= value <= _LARGEST_COUNT)):
        raise damaged(key, f"is {value!r}"[:80] + ", not a count")


def _check_numbers(value: Any, key: str, damaged: Callable[[str, str], Exception]) -> None:
    """Optimizer and scheduler states: containers of names, flags, numbers and tensors, none of them NaN."""
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, (str, int)) or (isinstance(name, str) and name.startswith("__")):
                raise damaged(key, f"has a key {name!r}"[:80])
            _check_numbers(item, f"{key}.{name}", damaged)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_numbers(item, f"{key}[{i}]", damaged)
    elif isinstance(value, float) and math.isnan(value):
        raise damaged(key, "is NaN")
    elif isinstance(value, torch.Tensor) and value.is_floating_point() and torch.isnan(value).any():
        raise damaged(key, "holds NaN")
    elif not isinstance(value, (type(None), bool, int, float, str, torch.Tensor)):
        raise damaged(key, f"is a {type(value).__name__}")


def _check_model_checkpoint_state(state: Any, key: str, damaged: Callable[[str, str], Exception]) -> None:
    """A ModelCheckpoint's state: on resume it deletes the files it records as superseded, so every path
    in it must name a checkpoint in its own ``dirpath``, and every score must be a number."""
    if not isinstance(state, dict):
        raise damaged(key, "is not a mapping")
    dirpath = state.get("dirpath")
    if dirpath is not None and not isinstance(dirpath, str):
        raise damaged(f"{key}.dirpath", "is not a path")
    best_k = state.get("best_k_models", {})
    if not isinstance(best_k, dict):
        raise damaged(f"{key}.best_k_models", "is not a mapping")
    paths = [(f"{key}.{name}", state.get(name, "")) for name in ("best_model_path", "kth_best_model_path")]
    paths += [(f"{key}.last_model_path", state.get("last_model_path", ""))]
    paths += [(f"{key}.best_k_models", name) for name in best_k]
    for where, value in paths:
        if not isinstance(value, str):
            raise damaged(where, "is not a path")
        inside = dirpath is not None and os.path.dirname(value) == dirpath.rstrip(os.sep)
        if value and not (inside and value.endswith(".ckpt") and ".." not in Path(value).parts):
            raise damaged(where, f"is {value[:80]!r}, not a checkpoint in its own folder")
    scores = [state.get(name) for name in ("best_model_score", "current_score", "kth_value")]
    for score in [*scores, *best_k.values()]:
        if score is None:
            continue
        if not (isinstance(score, torch.Tensor) and score.numel() == 1 and not torch.isnan(score).any()):
            raise damaged(key, f"has a score {score!r}"[:80] + ", not a number")


def _unpickle(path: str | Path, map_location: Any, mmap: bool) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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
    - Load: :func:`load_checkpoint`, plain data only. ``checked`` is a checkpoint the CLI has already read
      and checked, ``(path, contents)``: Lightning gets those contents for that path once, instead of
      reading the file again, which someone could have replaced in between.
    """

    def __init__(self, checked: tuple[Path, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self._checked = checked

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
        if self._checked is not None and Path(path).resolve() == self._checked[0].resolve():
            (_, contents), self._checked = self._checked, None
            return contents
        return load_checkpoint(path, map_location=map_location or (lambda storage, loc: storage))
