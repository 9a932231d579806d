"""Checkpoints read as data, never as code, and checked once, in one place: what a checkpoint may hold, and
the model and data settings it describes.

A checkpoint may come from anyone. Reading one never imports, builds or calls anything it names:

- :func:`load_checkpoint` unpickles it as plain data (``weights_only=True``) and checks Lightning's layout
  and every number Lightning restores (counters, loop progress, optimizer and scheduler states, the
  checkpoint callbacks' paths and scores) before anything uses them.
- Its ``hyper_parameters`` name classes and give their arguments, and a config parser would read any string
  there as config: a class spec written as JSON or YAML, a bare class name, a dotted function to import and
  call. So no parser ever sees them, and nothing they name is imported. Each class is looked up by its exact
  public name in a table of classes binclf is willing to build (:func:`buildable_classes`): its own
  networks, torch's optimizers, and those LR schedulers whose every argument is a plain value; the network
  may also be the class this command's config names as ``model.network``, taken from the config. Each
  argument is checked against the constructor's annotation (:func:`check_value`), and the objects are built
  directly in Python. A network is built first on the meta device, which allocates nothing, and must match
  the checkpoint's own weights before it is built for real.
- Its ``datamodule_hyper_parameters`` (:func:`checked_data_settings`) are checked the same way against the
  data module's constructor, and its weights against the model they are loaded into (:func:`check_weights`).
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import math
import os
import pickle
import re
import types
import typing
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from binclf.limits import require_memory
from binclf.networks import MLP, LogisticRegression
from binclf.paths import regular_file
from binclf.workarounds import datamodule_state_key, lightning_cli_settings


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted or read, with a message that names it."""


def load_checkpoint(path: str | Path, map_location: Any = "cpu", *, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint as plain data (``weights_only=True``): tensors, numbers, strings and containers,
    in Lightning's layout, every number checked (:func:`_check_layout`).

    A checkpoint that holds any other object is refused before that object is built, so a crafted file
    cannot run code here. A file cut short or damaged is reported as such, never half-read. The model the
    checkpoint describes (its hyperparameters) is checked and built by :mod:`binclf.from_checkpoint`.
    """
    regular_file(Path(path), "checkpoint")
    _check_archive(Path(path))
    state = _unpickle(path, map_location, mmap)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning checkpoint: it holds a {type(state).__name__}"
        )
    _check_layout(state, Path(path))
    return state


# Far more entries than a checkpoint of any model binclf trains has (one per tensor, and a few more).
_MOST_ENTRIES = 100_000


def _check_archive(path: Path) -> None:
    """A checkpoint is a zip archive (as torch saves one): its entries are counted, and what they hold once
    unpacked added up, from its directory, before anything is unpacked. A small file that would unpack to
    more than this machine may hold (a deflated tensor of zeros) is refused here, not in the middle of it."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CheckpointError(
            f"checkpoint {path} is incomplete or damaged, or not a checkpoint ({error})"
        ) from None
    if len(entries) > _MOST_ENTRIES:
        raise CheckpointError(
            f"checkpoint {path} holds {len(entries):,} entries, more than {_MOST_ENTRIES:,}"
        )
    try:
        require_memory(
            f"checkpoint {path}", sum(entry.file_size for entry in entries), "tensors once unpacked"
        )
    except ValueError as error:
        raise CheckpointError(str(error)) from None


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
    _check_tensors(state, "", damaged)
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
    if not isinstance(callbacks, dict) or not all(isinstance(key, str) for key in callbacks):
        raise damaged("callbacks", "is not a mapping of callbacks by name")
    for key, callback_state in callbacks.items():
        if key.startswith("ModelCheckpoint"):
            _check_model_checkpoint_state(callback_state, f"callbacks[{key.split('{')[0]}]", damaged)
    for key in ("optimizer_states", "lr_schedulers"):
        states = state.get(key, [])
        if not isinstance(states, list) or not all(isinstance(s, dict) for s in states):
            raise damaged(key, "is not a list of states")
        for i, item in enumerate(states):
            _check_numbers(item, f"{key}[{i}]", damaged)


def _check_tensors(value: Any, key: str, damaged: Callable[[str, str], Exception]) -> None:
    """Every tensor in a checkpoint is a plain one: dense, in memory, of a real or whole-number type. A
    sparse, meta-device, complex or quantized tensor would fail, or lose its imaginary part, wherever it is
    used."""
    if isinstance(value, dict):
        for name, item in value.items():
            _check_tensors(item, f"{key}.{name}" if key else str(name), damaged)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_tensors(item, f"{key}[{i}]", damaged)
    elif isinstance(value, torch.Tensor):
        plain = value.layout == torch.strided and value.device.type == "cpu" and not value.is_quantized
        if not plain or value.is_complex():
            kind = f"{value.layout}, {value.dtype}, on {value.device}".replace("torch.", "")
            raise damaged(key, f"is a tensor ({kind}), not a dense tensor of real numbers")


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
        if value and not (inside and value.endswith(".ckpt")):
            shown = value if len(value) <= 80 else f"...{value[-77:]}"  # a path's end says the most
            raise damaged(where, f"is {shown!r}, not a checkpoint in its own folder")
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


# Names that torch's annotations use without importing them at run time.
_ANNOTATION_NAMES = {
    "Callable": collections.abc.Callable,
    "Iterable": collections.abc.Iterable,
    "Sequence": collections.abc.Sequence,
}
_LONGEST_STRING = 200
_LONGEST_SEQUENCE = 10_000


@dataclass(frozen=True)
class ClassSettings:
    """A class from the table (or the command's own config) and its checked arguments."""

    name: str  # as the checkpoint gives it, and the table or the config knows it
    cls: type
    arguments: dict[str, Any]


class Unbuildable(Exception):
    """A value that does not fit an annotation; the message says why, the caller names the key."""


def _hints(function: Any) -> dict[str, Any] | None:
    """The resolved annotations of ``function``'s parameters, or ``None`` when they cannot be resolved."""
    try:
        return typing.get_type_hints(function, localns=_ANNOTATION_NAMES)
    except (NameError, TypeError):
        return None


def text_settings(cls: type) -> set[str]:
    """The settings of ``cls``'s constructor whose annotation admits text: files and column names, which a
    command takes from its config, never from a checkpoint."""

    def admits_text(hint: Any) -> bool:
        return hint is str or any(admits_text(arg) for arg in typing.get_args(hint))

    hints = _hints(cls.__init__) or {}
    return {name for name, hint in hints.items() if name != "return" and admits_text(hint)}


def _plain(hint: Any) -> bool:
    """Whether a value of this annotation can be checked here: numbers, booleans, strings, ``Literal``s,
    ``None``, and sequences or unions of these; a callable, a mapping or any other class cannot."""
    if hint in (int, float, bool, str, type(None), torch.Tensor):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return all(isinstance(arg, (str, int, bool)) for arg in args)
    if origin in (Union, types.UnionType, list, tuple, collections.abc.Sequence, collections.abc.Iterable):
        return bool(args) and all(arg is Ellipsis or _plain(arg) for arg in args)
    return False


def _settings(cls: type, skip: int) -> dict[str, Any] | None:
    """The settings of ``cls``'s constructor with their annotations, past its first ``skip`` parameters
    (the parameters an optimizer or scheduler is handed); ``None`` unless every setting is plain."""
    hints = _hints(cls.__init__)
    if hints is None:
        return None
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1 + skip :]
    settings = {}
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        hint = hints.get(parameter.name, Any)
        if not _plain(hint):
            return None
        settings[parameter.name] = hint
    return settings


def _public_names(cls: type, package: str) -> list[str]:
    """The names a config writes for ``cls``: where the package exports it, and where it is defined."""
    return [f"{package}.{cls.__name__}", f"{cls.__module__}.{cls.__qualname__}"]


@functools.cache
def buildable_classes() -> dict[str, dict[str, type]]:
    """For each role a checkpoint can fill (``network``, ``optimizer``, ``lr_scheduler``), the classes that
    binclf builds from a checkpoint, by every public name a config may use for them."""
    optimizers = [
        c
        for c in vars(torch.optim).values()
        if isinstance(c, type) and issubclass(c, Optimizer) and c is not Optimizer
    ]
    schedulers = [
        c
        for c in vars(torch.optim.lr_scheduler).values()
        if isinstance(c, type)
        and issubclass(c, (LRScheduler, ReduceLROnPlateau))
        and not c.__name__.startswith("_")
        and c is not LRScheduler
    ]
    tables: dict[str, dict[str, type]] = {"network": {}, "optimizer": {}, "lr_scheduler": {}}
    for role, classes, package, skip in [
        ("network", [MLP, LogisticRegression], "binclf.networks", 0),
        ("optimizer", optimizers, "torch.optim", 1),
        ("lr_scheduler", schedulers, "torch.optim.lr_scheduler", 1),
    ]:
        for cls in classes:
            if _settings(cls, skip) is not None:  # e.g. LambdaLR, whose argument is a function, is left out
                tables[role] |= dict.fromkeys(_public_names(cls, package), cls)
    return tables


def check_value(value: Any, hint: Any) -> Any:
    """``value`` as the annotation ``hint`` wants it, or :class:`Unbuildable` saying why it does not fit.

    Numbers must be finite; an ``int`` stands for a ``float``, never a boolean for a number.
    """
    if hint is Any or hint is inspect.Parameter.empty:  # unannotated: numbers and booleans only
        hint = Union[bool, int, float, None]  # noqa: UP007 -- a runtime value, not an annotation
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        reasons = []
        for option in args:
            try:
                return check_value(value, option)
            except Unbuildable as error:
                reasons.append(str(error))
        raise Unbuildable(reasons[-1] if len(set(reasons)) == 1 else f"is {_show(value)}, not {_name(hint)}")
    if hint is type(None):
        if value is None:
            return None
        raise Unbuildable(f"is {_show(value)}, not null")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise Unbuildable(f"is {_show(value)}, not true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise Unbuildable(f"is {_show(value)}, not a whole number")
    if hint in (float, torch.Tensor):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 2**1023 else math.inf  # a whole number past float64: inf
            if not math.isfinite(number):
                raise Unbuildable(f"is {_show(value)}, not a finite number")
            return number
        raise Unbuildable(f"is {_show(value)}, not a number")
    if hint is str:
        if isinstance(value, str) and len(value) <= _LONGEST_STRING:
            return value
        raise Unbuildable(f"is {_show(value)}, not a short string")
    if origin is Literal:
        if any(type(value) is type(arg) and value == arg for arg in args):
            return value
        raise Unbuildable(f"is {_show(value)}, not one of {', '.join(map(repr, args))}")
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable):
        if not isinstance(value, (list, tuple)) or len(value) > _LONGEST_SEQUENCE:
            raise Unbuildable(f"is {_show(value)}, not a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise Unbuildable(f"is {_show(value)}, not a list of {len(args)}")
            return tuple(check_value(item, arg) for item, arg in zip(value, args, strict=True))
        return (tuple if origin is tuple else list)(check_value(item, args[0]) for item in value)
    raise Unbuildable(f"is {_show(value)}, which binclf does not build from a checkpoint")


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _show(value: Any) -> str:
    """A value read from a file, shortened for a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _refuse(path: Path, key: str, why: str) -> CheckpointError:
    return CheckpointError(f"refused checkpoint {path}: hyper_parameters.{key} {why}")


def _checked_arguments(arguments: Any, settings: dict[str, Any], path: Path, key: str) -> dict[str, Any]:
    if not isinstance(arguments, dict):
        raise _refuse(path, key, f"is {_show(arguments)}, not a mapping of settings")
    checked = {}
    for name, value in arguments.items():
        if name not in settings:
            raise _refuse(path, f"{key}.{name}", "is not a setting of that class")
        try:
            checked[name] = check_value(value, settings[name])
        except Unbuildable as error:
            raise _refuse(path, f"{key}.{name}", str(error)) from None
    return checked


def _role(hint: Any) -> str | None:
    """Which table a model setting's classes come from, by its annotation."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    if any(isinstance(o, type) and issubclass(o, nn.Module) for o in options):
        return "network"
    if OptimizerCallable in options:
        return "optimizer"
    if LRSchedulerCallable in options:
        return "lr_scheduler"
    return None


def checked_model_settings(
    hyperparameters: dict[str, Any], path: Path, model_class: type, network: tuple[str, type] | None
) -> dict[str, Any]:
    """A checkpoint's model settings, checked: for each setting of ``model_class`` the checkpoint gives,
    either a plain value or a :class:`ClassSettings` for a class to build. ``network`` is the class this
    command's config names as ``model.network``, with the name the config gives it: the only class beyond
    the table that the checkpoint's network may be. Raises :class:`CheckpointError` naming the file and the
    key."""
    hints = _hints(model_class.__init__) or {}
    parameters = inspect.signature(model_class.__init__).parameters
    class_path, settings = lightning_cli_settings(hyperparameters)
    if class_path is not None:  # the model is binclf's BinaryClassifier, never a class a file names
        raise _refuse(
            path, "_class_path", f"is {_show(class_path)}: the model's class is not the checkpoint's to say"
        )
    checked: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in parameters or key == "self":
            raise _refuse(path, key, "is not a setting of the model")
        hint = hints.get(key, Any)
        role = _role(hint)
        if role is None:
            try:
                checked[key] = check_value(value, hint)
            except Unbuildable as error:
                raise _refuse(path, key, str(error)) from None
            continue
        if value is None and type(None) in typing.get_args(hint):
            checked[key] = None
            continue
        if not isinstance(value, dict) or set(value) - {"class_path", "init_args", "dict_kwargs"}:
            raise _refuse(
                path, key, f"is {_show(value)}, not a class and its settings (class_path, init_args)"
            )
        if value.get("dict_kwargs"):
            raise _refuse(
                path, f"{key}.dict_kwargs", "is not empty: only init_args are read from a checkpoint"
            )
        name = value.get("class_path")
        cls = network[1] if role == "network" and network is not None and name == network[0] else None
        cls = cls or (buildable_classes()[role].get(name) if isinstance(name, str) else None)
        if cls is None:
            raise _refuse(
                path,
                f"{key}.class_path",
                f"is {_show(name)}, which is not among the classes binclf builds from a checkpoint: its own "
                "networks, torch's optimizers and LR schedulers that take no function, and the network this "
                "command's config names",
            )
        settings = _settings(cls, 0 if role == "network" else 1)
        if settings is None:
            raise _refuse(path, f"{key}.class_path", f"is {name}, whose settings are not all plain values")
        arguments = _checked_arguments(value.get("init_args", {}), settings, path, f"{key}.init_args")
        checked[key] = ClassSettings(name, cls, arguments)
    return checked


def trained_data_class(checkpoint: dict[str, Any]) -> str | None:
    """The class path of the data module a checkpoint was trained with, where LightningCLI saved it."""
    class_path, _ = lightning_cli_settings(checkpoint.get("datamodule_hyper_parameters", {}))
    return class_path if isinstance(class_path, str) else None


def checked_data_settings(checkpoint: dict[str, Any], data_class: type, path: Path) -> dict[str, Any]:
    """The data settings a checkpoint was trained with, each checked against ``data_class``'s constructor
    as model settings are. Raises :class:`CheckpointError` naming the file and the key."""
    _, stored = lightning_cli_settings(checkpoint.get("datamodule_hyper_parameters", {}))
    hints = _hints(data_class.__init__) or {}
    parameters = inspect.signature(data_class.__init__).parameters
    checked = {}
    for key, value in stored.items():
        where = f"refused checkpoint {path}: datamodule_hyper_parameters.{key}"
        if key not in parameters or key == "self":
            raise CheckpointError(f"{where} is not a setting of {data_class.__name__}")
        try:
            checked[key] = check_value(value, hints.get(key, Any))
        except Unbuildable as error:
            raise CheckpointError(f"{where} {error}") from None
    return checked


def differences(checkpoint: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """How a checkpoint's checked model settings differ from the config's, checked the same way: one
    ``"model.key: old in the checkpoint, new now"`` per setting both give."""
    found = []
    for key in sorted(checkpoint.keys() & config.keys()):
        old, new = checkpoint[key], config[key]
        if isinstance(old, ClassSettings) and isinstance(new, ClassSettings):
            if old.cls is not new.cls:
                found.append(f"model.{key}: {old.cls.__name__} in the checkpoint, {new.cls.__name__} now")
                continue
            for name in sorted(old.arguments.keys() & new.arguments.keys()):
                if old.arguments[name] != new.arguments[name]:
                    found.append(
                        f"model.{key}.init_args.{name}: {old.arguments[name]!r} in the checkpoint, "
                        f"{new.arguments[name]!r} now"
                    )
        elif old != new:
            found.append(f"model.{key}: {_describe(old)} in the checkpoint, {_describe(new)} now")
    return found


def _describe(value: Any) -> str:
    return value.cls.__name__ if isinstance(value, ClassSettings) else repr(value)


def build_network(
    cls: type, arguments: dict[str, Any], weights: dict[str, torch.Tensor], path: Path
) -> nn.Module:
    """``cls(**arguments)``, once its shapes on the meta device match ``weights`` (the checkpoint's
    ``network.*`` tensors): settings that would allocate more than the checkpoint holds never get that far."""
    try:
        with torch.device("meta"):
            shapes = {name: tuple(t.shape) for name, t in cls(**arguments).state_dict().items()}
    except Exception as error:  # whatever the constructor raises on these values
        raise _refuse(path, "network.init_args", f"do not build a {cls.__name__}: {error}") from None
    stored = {name: tuple(t.shape) for name, t in weights.items()}
    if shapes != stored:
        names = sorted(set(shapes) ^ set(stored)) or sorted(n for n in shapes if shapes[n] != stored[n])
        raise _refuse(
            path,
            "network.init_args",
            f"describe a {cls.__name__} that does not fit the checkpoint's weights (first difference: "
            f"{names[0]})",
        )
    return cls(**arguments)


def build_model(
    checked: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    model_class: type,
    defaults: dict[str, Any],
    path: Path,
) -> Any:
    """``model_class`` built in Python from :func:`checked_model_settings`; a setting the checkpoint does
    not give is taken from ``defaults`` (what this command's config built)."""
    arguments = dict(defaults)
    for key, value in checked.items():
        if not isinstance(value, ClassSettings):
            arguments[key] = value
            continue
        cls, settings = value.cls, value.arguments
        if issubclass(cls, nn.Module):
            prefix = f"{key}."
            weights = {n[len(prefix) :]: t for n, t in state_dict.items() if n.startswith(prefix)}
            arguments[key] = build_network(cls, settings, weights, path)
        else:
            arguments[key] = _checked_callable(cls, settings, path, key)
    return model_class(**arguments)


def _checked_callable(cls: type, settings: dict[str, Any], path: Path, key: str) -> functools.partial:
    """An optimizer or scheduler factory, as LightningCLI would inject it, tried once on a stand-in
    parameter so that settings the class rejects are reported now, with the key."""
    factory = functools.partial(cls, **settings)
    stand_in = torch.nn.Parameter(torch.zeros(1))
    try:
        if issubclass(cls, Optimizer):
            factory([stand_in])
        else:
            factory(torch.optim.SGD([stand_in], lr=1.0))
    except Exception as error:  # whatever the constructor raises on these values (fused=True on a CPU, ...)
        raise _refuse(path, f"{key}.init_args", f"do not build a {cls.__name__}: {error}") from None
    return factory


def restore_data_state(datamodule: Any, path: Path, checkpoint: dict[str, Any]) -> None:
    """Give ``datamodule`` the state its checkpoint's network was trained with (a table's label names and
    statistics, the inputs' standardisation), before anything is built from the data. Lightning would
    restore it only after ``setup`` has built the splits. A data module with state of its own needs the
    checkpoint's: without it the network would see its inputs scaled as this config says."""
    key = datamodule_state_key(datamodule)
    if key in checkpoint:
        if not isinstance(checkpoint[key], dict) or not all(
            isinstance(name, str) for name in checkpoint[key]
        ):
            raise CheckpointError(f"checkpoint {path} is damaged: {key} is not the data module's state")
        datamodule.load_state_dict(checkpoint[key])
    elif datamodule.state_dict():
        raise CheckpointError(
            f"checkpoint {path} has no {key} state: it does not say what its network was trained on "
            "(how its inputs were scaled, its label names)"
        )


# A calibration's scale, and the size of its shift: a fit on any validation split a network could score lies
# far inside these; one outside them turns every logit into noise or into 0 (p = 0.5 everywhere).
CALIBRATION_SCALES = (1e-4, 1e4)


def check_weights(checkpoint: dict[str, Any], model: nn.Module, path: Path) -> None:
    """The checkpoint's weights fit ``model``, name for name and shape; every parameter is finite; and its
    calibration is one the model's ``calibration`` can have. Checked before Lightning or binclf loads them,
    whose own errors would be a page of tensor shapes, or a model that silently scores 50 %."""
    stored, expected = checkpoint["state_dict"], model.state_dict()
    for name, tensor in expected.items():
        if name not in stored:
            raise CheckpointError(f"checkpoint {path} does not fit this model: it has no {name}")
        if stored[name].shape != tensor.shape:
            raise CheckpointError(
                f"checkpoint {path} does not fit this model: {name} is {list(stored[name].shape)} in the "
                f"checkpoint but {list(tensor.shape)} here (were --data or --model settings changed?)"
            )
    extra = sorted(set(stored) - set(expected))
    if extra:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model: it has {extra[0]}, which this lacks"
        )
    for name, _ in model.named_parameters():
        if not torch.isfinite(stored[name]).all():
            raise CheckpointError(
                f"checkpoint {path}: {name} is not finite: the run that saved it had diverged"
            )
    scale, shift = stored["logit_scale"], stored["logit_shift"]
    low, high = CALIBRATION_SCALES
    if scale.numel() != 1 or shift.numel() != 1 or not (low <= scale <= high and abs(shift) <= high):
        shown = f"logit_scale {_show(scale.tolist())}, logit_shift {_show(shift.tolist())}"
        raise CheckpointError(
            f"checkpoint {path}: its calibration is damaged: {shown} (the scale must lie between {low:g} and "
            f"{high:g}, the shift within ±{high:g}: a calibration outside them says nothing a test measures)"
        )
    identity = {"none": (scale == 1 and shift == 0), "temperature": shift == 0, "affine": True}
    if not identity[model.calibration]:
        raise CheckpointError(
            f"checkpoint {path}: its calibration is damaged: calibration is {model.calibration!r}, but "
            f"logit_scale is {scale.item()} and logit_shift {shift.item()}"
        )


def evaluated_model(configured: Any, checked: dict[str, Any], path: Path, checkpoint: dict[str, Any]) -> Any:
    """The model a checkpoint is evaluated with, its weights loaded: built in Python from its ``checked``
    settings, and from the ``configured`` model's for any setting it does not give."""
    names = inspect.signature(type(configured)).parameters
    defaults = {name: getattr(configured, name) for name in names if hasattr(configured, name)}
    model = build_model(checked, checkpoint["state_dict"], type(configured), defaults, path)
    check_weights(checkpoint, model, path)
    model.load_state_dict(checkpoint["state_dict"])
    return model


def as_config(checked: dict[str, Any]) -> dict[str, Any]:
    """Checked settings as a parsed config holds them (``class_path`` and ``init_args``), for the record of
    what a command ran with."""
    from jsonargparse import Namespace

    return {
        key: Namespace(class_path=value.name, init_args=Namespace(**value.arguments))
        if isinstance(value, ClassSettings)
        else value
        for key, value in checked.items()
    }
