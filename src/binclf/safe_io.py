"""File safety: files written whole or not at all, and checkpoints read as data, never as code.

Everything binclf writes (checkpoints, figures, predictions, a sweep's results) goes through
:func:`atomic_write`; every checkpoint it reads goes through :func:`load_checkpoint` and, before LightningCLI
parses their hyperparameters, :func:`check_hyperparameters`.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.fabric.plugins import TorchCheckpointIO
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau


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
    shaped as Lightning writes them (a dict with its version key and a ``state_dict`` of tensors).

    A checkpoint that holds any other object is refused before that object is built, so a crafted file
    cannot run code here. A file cut short or damaged is reported as such, never half-read. What the
    checkpoint *names* (its hyperparameters) is checked separately, by :func:`check_hyperparameters`.
    """
    state = _unpickle(path, map_location, mmap)
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
    loops = state.get("loops", {})
    expected = ("fit_loop", "validate_loop", "test_loop", "predict_loop")  # Lightning restores each, if any
    if not isinstance(loops, dict) or (loops and not all(isinstance(loops.get(k), dict) for k in expected)):
        raise CheckpointError(
            f"checkpoint {path} is damaged: its loops state lacks one of {', '.join(expected)}"
        )
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        if not isinstance(state.get(key, {}), dict):
            raise CheckpointError(f"checkpoint {path}: {key} is a {type(state[key]).__name__}, not a mapping")
    return state


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


def _class_paths(value: Any) -> Iterator[str]:
    """Every ``class_path`` in a parsed config, at any depth."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        if isinstance(value.get("class_path"), str):
            yield value["class_path"]
        for item in value.values():
            yield from _class_paths(item)
    elif isinstance(value, list):
        for item in value:
            yield from _class_paths(item)


def trusted_classes(config: Namespace) -> set[str]:
    """The classes that a checkpoint's hyperparameters may name: binclf's networks and data modules,
    torch's optimizers and LR schedulers, and the classes this command's own config names."""
    from binclf.data import TabularDataModule, TwoGaussianDataModule
    from binclf.networks import MLP, LogisticRegression

    own = [MLP, LogisticRegression, TwoGaussianDataModule, TabularDataModule]
    optimizers = [c for c in vars(torch.optim).values() if isinstance(c, type) and issubclass(c, Optimizer)]
    schedulers = [
        c
        for c in vars(torch.optim.lr_scheduler).values()
        if isinstance(c, type) and issubclass(c, (LRScheduler, ReduceLROnPlateau))
    ]
    trusted = {f"{c.__module__}.{c.__qualname__}" for c in [*own, *optimizers, *schedulers]}
    # Classes by the public names configs use: torch.optim.SGD, not torch.optim.sgd.SGD; binclf.data.X.
    trusted |= {f"torch.optim.{c.__name__}" for c in optimizers}
    trusted |= {f"torch.optim.lr_scheduler.{c.__name__}" for c in schedulers}
    trusted |= {f"binclf.data.{c.__name__}" for c in own if c.__module__.startswith("binclf.data")}
    return trusted | set(_class_paths(config))


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
