"""What binclf builds from a checkpoint: the model, from plain values checked against constructor signatures.

A checkpoint may come from anyone. Its ``hyper_parameters`` name classes and give their arguments, and a
config parser would read any string there as config: a class spec written as JSON or YAML, a bare class
name, a dotted function to import and call. So no parser ever sees them, and nothing they name is imported:

- Each class is looked up by its exact public name in a table of classes binclf is willing to build
  (:func:`buildable_classes`): its own networks, torch's optimizers, and those LR schedulers whose every
  argument is a plain value. The table holds the classes themselves; a name that is not in it is refused.
  A class that this command's own config names (a user's network) is taken from the config, never from
  the file, and the checkpoint supplies only its argument values.
- Each argument is checked against the constructor's annotation (:func:`check_value`): a number, a
  boolean, a sequence of numbers, or one of a ``Literal``'s strings. A string stands only where the
  annotation says ``str``; a key the constructor lacks is refused.
- The objects are then built directly in Python. A network is built first on the meta device, which
  allocates nothing, and must match the checkpoint's own weights before it is built for real.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import math
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from binclf.networks import MLP, LogisticRegression
from binclf.safe_io import CheckpointError

# What LightningCLI stores beside a model's settings: the name of its own function, never used here.
_INSTANTIATOR = ("_instantiator", "lightning.pytorch.cli.instantiate_module")
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
            if not math.isfinite(value):
                raise Unbuildable(f"is {value}, not a finite number")
            return float(value)
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
    hyperparameters: dict[str, Any], path: Path, model_class: type, own_classes: dict[str, type]
) -> dict[str, Any]:
    """A checkpoint's model settings, checked: for each setting of ``model_class`` the checkpoint gives,
    either a plain value or ``(cls, arguments)`` for a class to build. ``own_classes`` are the classes this
    command's config names, by the names the config gives them. Raises :class:`CheckpointError` naming the
    file and the key."""
    hints = _hints(model_class.__init__) or {}
    parameters = inspect.signature(model_class.__init__).parameters
    checked: dict[str, Any] = {}
    for key, value in hyperparameters.items():
        if (key, value) == _INSTANTIATOR:
            continue
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
        cls = own_classes.get(name) if role == "network" and isinstance(name, str) else None
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


def classes_named_in(config: Any) -> dict[str, type]:
    """The classes a parsed config names, by the names it gives them, as the parser left them imported:
    looked up in ``sys.modules``, never imported."""
    named: dict[str, type] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            name = value.get("class_path")
            if isinstance(name, str) and "." in name:
                module, _, attribute = name.rpartition(".")
                cls = getattr(sys.modules.get(module), attribute, None)
                if isinstance(cls, type):
                    named[name] = cls
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(config)
    return named


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
    key = type(datamodule).__qualname__
    if key in checkpoint:
        datamodule.load_state_dict(checkpoint[key])
    elif datamodule.state_dict():
        raise CheckpointError(
            f"checkpoint {path} has no {key} state: it does not say what its network was trained on "
            "(how its inputs were scaled, its label names)"
        )


def evaluated_model(configured: Any, checked: dict[str, Any], path: Path, checkpoint: dict[str, Any]) -> Any:
    """The model a checkpoint is evaluated with: built in Python from its ``checked`` settings, and from
    the ``configured`` model's for any setting it does not give."""
    names = inspect.signature(type(configured)).parameters
    defaults = {name: getattr(configured, name) for name in names if hasattr(configured, name)}
    return build_model(checked, checkpoint["state_dict"], type(configured), defaults, path)


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
