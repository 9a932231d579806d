"""What a command runs on, decided once before anything is built (:func:`decide`): which run folder, which
checkpoint and why, which model and data settings. The decision is one plain object, said in one line
(:meth:`Decision.line`). And run folders (:class:`RunFolder`): claimed by the command that creates them, and
removed if it fails before it has a checkpoint.

Plain LightningCLI evaluates the untrained model when given no ``--ckpt_path``, cannot find ``best`` outside
the process that ran ``fit``, and evaluates a checkpoint on whatever data the config describes. Here:

- ``test``, ``validate`` and ``predict`` evaluate a run: the one whose checkpoint is given (``--ckpt_path
  FILE``), whose config is given (``-c <run>/config.yaml``), whose folder the logger names, or else the
  latest run of this data under the logger's folder (within ``--run_name``). They take its best checkpoint,
  or with ``--ckpt_path last`` its ``last.ckpt``.
- They evaluate it as it was trained: with its checkpoint's model settings, and on its data settings, both
  checked against the constructors; except the data settings that are text (files, columns), which always
  come from the config, never from a file that may be anyone's, and those the command gives, which evaluate
  it on other data. Each difference from the run's own is said.
- ``fit`` trains a new run, or with ``--ckpt_path`` continues one: only a run's ``last.ckpt`` continues it
  in its own folder; any other checkpoint starts a new run from it. A checkpoint that has already trained as
  far as the budget asks is left alone, and the line says so.

A run is "of this data" when it was trained on the config's data class with the same values of the settings
the data module lists in ``identity_settings`` (a table's file and columns, say); other runs are passed over.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from binclf.checkpoint import (
    CheckpointError,
    checked_data_settings,
    checked_model_settings,
    differences,
    load_checkpoint,
    text_settings,
    trained_data_class,
)
from binclf.paths import folder_name, regular_file

DOING = {"fit": "fitting", "validate": "validating", "test": "testing", "predict": "predicting with"}
_VERSION = re.compile(r"version_(\d+)")


@dataclass(frozen=True)
class Request:
    """What a command was asked to run on, from its parsed config: plain values, and the classes it names."""

    command: str
    ckpt_path: str | None = None  # as given: None, best, last, or a file
    log_root: Path | None = (
        None  # where the configured logger keeps its runs (under --run_name); None: unknown
    )
    run_name: str | None = None
    logger_version: int | str | None = None
    checkpoint_dir: Path | None = None  # --checkpoint.dirpath
    config_files: Sequence[Path] = ()
    data_class: type | None = None
    data: dict[str, Any] = field(default_factory=dict)  # the config's data settings, defaults included
    given: frozenset[str] = frozenset()  # the data settings the command line or a config file gave
    model_class: type | None = None
    model: dict[str, Any] = field(default_factory=dict)  # the config's model settings, as parsed
    network: tuple[str, type] | None = None  # the config's model.network: its class path, and the class
    max_epochs: int | None = None
    max_steps: int = -1
    resume_with_other_data: bool = False


@dataclass(frozen=True)
class Decision:
    """What a command runs on.

    ``run`` is the run folder it evaluates or continues (``None``: a new one, claimed when it is built);
    ``checkpoint`` and ``contents`` the checkpoint, read and checked once, and ``why`` how it was chosen;
    ``model`` the checked model settings an evaluation is built from; ``data`` the data settings the command
    runs with, and ``differences`` each one that differs from what the run was trained on; ``finished``
    why a fit has nothing to train.
    """

    command: str
    log_root: Path | None = None
    run: Path | None = None
    checkpoint: Path | None = None
    contents: dict[str, Any] | None = field(default=None, repr=False)
    why: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    data_summary: str = ""
    differences: tuple[str, ...] = ()
    finished: str | None = None

    @property
    def resumes(self) -> bool:
        """Whether a fit continues the run of its checkpoint, in that run's folder."""
        return self.command == "fit" and self.run is not None

    def line(self) -> str:
        """The decision in one line."""
        if self.finished is not None:
            return self.finished
        new = f"a new run under {self.log_root}" if self.log_root is not None else "a new run"
        if self.command == "fit":
            if self.resumes:
                return f"resuming {self.run} from its last.ckpt, at {_progress(self.contents)}"
            if self.checkpoint is not None:
                return f"fitting {new}, from {self.checkpoint} (only a run's last.ckpt continues that run)"
            return f"fitting {new}"
        where = f"{self.run}, {self.why}" if self.run is not None else f"{self.why}, logged in {new}"
        data = (
            f"on other data: {'; '.join(self.differences)}"
            if self.differences
            else f"on its own data ({self.data_summary})"
        )
        return f"{DOING[self.command]} {where}: {self.checkpoint.name}{_score(self.contents)}, {data}"


def decide(request: Request) -> Decision:
    """What ``request``'s command runs on. Raises ``ValueError`` or ``FileNotFoundError`` with a line for the
    user where there is no answer, and :class:`~binclf.checkpoint.CheckpointError` for a checkpoint that is
    not to be trusted."""
    if request.command == "fit" and request.ckpt_path is None:
        return Decision("fit", log_root=request.log_root, data=request.data)
    path, why, run = _find(request)
    contents = load_checkpoint(path)  # read once: what is checked is what is used
    trained = checked_model_settings(
        contents.get("hyper_parameters", {}), path, request.model_class, request.network
    )
    trained_data = _trained_data(request, path, contents)
    if request.command == "fit":
        return _continued(request, path, contents, run, trained, trained_data)
    text = text_settings(request.data_class)
    data = {
        key: value if key in text or key in request.given or key not in trained_data else trained_data[key]
        for key, value in request.data.items()
    }
    changed = [
        f"{key} {_show(data[key])}, trained on {_show(trained_data[key])}"
        for key in sorted(trained_data.keys() & data.keys())
        if not _same_value(trained_data[key], data[key])
    ]
    return Decision(
        request.command,
        log_root=request.log_root,
        run=run,
        checkpoint=path,
        contents=contents,
        why=why,
        model=trained,
        data=data,
        data_summary=_summary(request.data_class, data),
        differences=tuple(changed),
    )


def _trained_data(request: Request, path: Path, contents: dict[str, Any]) -> dict[str, Any]:
    """The data settings a checkpoint was trained with, checked; a data class other than the config's is
    refused: the checkpoint's network needs the data it was trained on."""
    trained_class = trained_data_class(contents)
    name = request.data_class.__name__
    if trained_class is not None and _short(trained_class) != name:
        raise ValueError(
            f"{path} was trained on {_short(trained_class)}, not on {name} as this command's config says: "
            "give the config of its data"
        )
    return checked_data_settings(contents, request.data_class, path)


def _continued(
    request: Request,
    path: Path,
    contents: dict[str, Any],
    run: Path | None,
    trained: dict[str, Any],
    trained_data: dict[str, Any],
) -> Decision:
    """``fit --ckpt_path``: the checkpoint must have the config's model settings, and its data settings
    unless asked otherwise; only a run's ``last.ckpt`` continues that run."""
    configured = {}
    for key, value in request.model.items():
        with contextlib.suppress(CheckpointError):  # a setting the checkpoint could not hold either
            configured |= checked_model_settings({key: value}, path, request.model_class, request.network)
    changed_model = differences(trained, configured)
    if changed_model:
        raise ValueError(
            f"--ckpt_path {path} was trained with other model settings ({'; '.join(changed_model)}): "
            "pass the settings it was trained with"
        )
    _check_training_state(contents, path, trained)
    changed = [
        f"data.{key}: {_show(trained_data[key])} in the checkpoint, {_show(request.data[key])} now"
        for key in sorted(trained_data.keys() & request.data.keys())
        if not _same_value(trained_data[key], request.data[key])
    ]
    if changed and not request.resume_with_other_data:
        raise ValueError(
            f"--ckpt_path {path} was trained with other data settings ({'; '.join(changed)}): pass the "
            "settings it was trained with, or --resume_with_other_data true to train it on this data"
        )
    continues = run if path.name == "last.ckpt" else None
    return Decision(
        "fit",
        log_root=request.log_root,
        run=continues,
        checkpoint=path,
        contents=contents,
        data=request.data,
        finished=_finished(continues or path, contents, request),
    )


def _check_training_state(contents: dict[str, Any], path: Path, trained: dict[str, Any]) -> None:
    """What training goes on from must be there, and agree with the settings it was trained with: the loops'
    progress, and the optimizer's state, whose settings (learning rate, momentum, ...) the optimizer takes
    from the checkpoint, not from the hyperparameters beside them."""
    optimizers = contents.get("optimizer_states") or []
    progress = contents.get("loops", {}).get("fit_loop", {}).get("epoch_progress")
    if not optimizers or not isinstance(progress, dict):
        missing = "no optimizer state" if not optimizers else "no progress of its fit loop"
        raise CheckpointError(
            f"checkpoint {path} holds {missing} to go on training from (weights only, say): binclf test "
            "and predict take it, binclf fit --ckpt_path does not"
        )
    optimizer, scheduler = trained.get("optimizer"), trained.get("lr_scheduler")
    settings = optimizer.arguments if optimizer is not None else {}
    for i, group in enumerate(optimizers[0].get("param_groups", [])):
        for name, value in settings.items():
            stored = group.get("initial_lr" if name == "lr" and scheduler is not None else name, value)
            if _plain(stored) != _plain(value) and not (value is None and stored is None):
                state, setting = (
                    f"optimizer_states[0].param_groups[{i}].{name}",
                    f"optimizer.init_args.{name}",
                )
                raise CheckpointError(
                    f"checkpoint {path}: {state} is {_show(stored)}, but hyper_parameters.{setting} is "
                    f"{_show(value)}: the optimizer would go on with the first, not the second"
                )
        lr = group.get("lr")
        if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0 <= lr < float("inf")):
            raise CheckpointError(
                f"checkpoint {path}: optimizer_states[0].param_groups[{i}].lr is {_show(lr)}"
            )


def _finished(where: Path, contents: dict[str, Any], request: Request) -> str | None:
    """Why a checkpoint has nothing left to train under the request's budget, or ``None``: as Lightning's
    fit loop judges it, by the epochs it has processed and the optimizer steps it has taken."""
    epochs, steps = _epochs_processed(contents), contents.get("global_step", 0)
    max_epochs = request.max_epochs
    if max_epochs is None and request.max_steps == -1:
        max_epochs = 1000  # Lightning's default budget
    if request.max_steps != -1 and steps >= request.max_steps:
        budget = f"step {steps}, and trainer.max_steps is {request.max_steps}"
    elif max_epochs not in (None, -1) and epochs >= max_epochs:
        budget = f"epoch {epochs}, and trainer.max_epochs is {max_epochs}"
    else:
        return None
    return f"{where} has trained as far as asked: it is at {budget}; nothing was trained or written"


def _epochs_processed(contents: dict[str, Any]) -> int:
    """The epochs a checkpoint's fit has processed, as Lightning's fit loop counts them towards max_epochs."""
    progress = contents.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return int(progress.get("processed", contents.get("epoch", 0)))


def _progress(contents: dict[str, Any] | None) -> str:
    contents = contents or {}
    return f"epoch {_epochs_processed(contents)}, step {contents.get('global_step', 0)}"


def _find(request: Request) -> tuple[Path, str, Path | None]:
    """The checkpoint a request asks for, which run that is in words, and the run's folder (``None`` for a
    checkpoint of no run this command keeps)."""
    wanted = request.ckpt_path
    if wanted not in (None, "best", "last"):
        path = regular_file(Path(wanted), "--ckpt_path")
        return path, "the given checkpoint", run_of(path, request.log_root)
    for config in reversed(request.config_files):
        if run_checkpoints(config.parent):
            return _pick(config.parent, wanted), "the run whose config was given", config.parent
    if request.logger_version is not None and request.log_root is not None:
        version = request.logger_version
        run = request.log_root / (f"version_{version}" if isinstance(version, int) else str(version))
        if not run_checkpoints(run):
            raise FileNotFoundError(f"trainer.logger.version names {run}, which holds no checkpoint")
        return _pick(run, wanted), "the run trainer.logger.version names", run
    if request.checkpoint_dir is not None:
        return _pick(request.checkpoint_dir, wanted, folder=True), "from --checkpoint.dirpath", None
    if request.log_root is None:
        raise ValueError(
            "cannot find checkpoints without a logger or --checkpoint.dirpath; pass --ckpt_path FILE"
        )
    passed_over = []
    for run in runs_under(request.log_root):
        found = _pick(run, wanted)
        other = _other_data(load_checkpoint(found, mmap=True), found, request)
        if other is None:
            named = f"named {request.run_name}" if request.run_name else "of this data"
            return found, f"the latest run {named}", run
        passed_over.append(f"{run} ({other})")
    identity = [key for key in _identity(request) if key in request.data]
    looked_for = ", ".join(
        [request.data_class.__name__, *(f"{k} {_show(request.data[k])}" for k in identity)]
    )
    if passed_over:
        raise FileNotFoundError(
            f"no run under {request.log_root} was trained on this data ({looked_for}); the newest are "
            f"{', '.join(passed_over[:3])}: pass --ckpt_path FILE, or -c a run's config.yaml, to evaluate one"
        )
    raise FileNotFoundError(
        f"no checkpoint found under {request.log_root}: run `binclf fit` first, or pass --ckpt_path FILE"
    )


def _identity(request: Request) -> tuple[str, ...]:
    return tuple(getattr(request.data_class, "identity_settings", ()))


def _other_data(contents: dict[str, Any], path: Path, request: Request) -> str | None:
    """What a run was trained on where that is not this data (another data class, or other values of the
    data module's ``identity_settings``), in words; ``None`` if it is this data."""
    trained_class = trained_data_class(contents)
    if trained_class is not None and _short(trained_class) != request.data_class.__name__:
        return _short(trained_class)
    trained = checked_data_settings(contents, request.data_class, path)
    other = [
        f"{key} {_show(trained[key])}"
        for key in _identity(request)
        if key in trained and key in request.data and not _same_value(trained[key], request.data[key])
    ]
    return ", ".join(other) or None


def _pick(run: Path, wanted: str | None, folder: bool = False) -> Path:
    """The checkpoint ``wanted`` of a run (``None`` or ``best``: its best; ``last``), or of a folder."""
    checkpoints = run if folder else run / "checkpoints"
    found = checkpoints / "last.ckpt" if wanted == "last" else best_checkpoint(checkpoints)
    if found is None or not found.is_file():
        raise FileNotFoundError(f"no {'last.ckpt' if wanted == 'last' else 'checkpoint'} in {checkpoints}")
    return found


def run_checkpoints(run: Path) -> list[Path]:
    """The checkpoints of the run in folder ``run``."""
    return sorted((run / "checkpoints").glob("*.ckpt"))


def run_of(checkpoint: Path, root: Path | None) -> Path | None:
    """The run under ``root`` that a checkpoint belongs to (``root/<run>/checkpoints/<file>``), or ``None``
    for a checkpoint of no run there: evaluating it then starts a run folder of its own, and nothing is
    written into a folder this command's logger does not keep."""
    run = checkpoint.parent.parent
    in_a_run = checkpoint.parent.name == "checkpoints" and (run / "config.yaml").is_file()
    return run if in_a_run and root is not None and run.parent.resolve() == root.resolve() else None


def runs_under(root: Path) -> list[Path]:
    """The ``version_N`` runs under ``root`` that hold a checkpoint, newest first."""
    runs = [
        (int(match.group(1)), folder)
        for folder in root.glob("version_*")
        if (match := _VERSION.fullmatch(folder.name)) and run_checkpoints(folder)
    ]
    return [folder for _, folder in sorted(runs, reverse=True)]


def best_checkpoint(directory: Path) -> Path | None:
    """The best checkpoint recorded in ``directory/last.ckpt`` by a ModelCheckpoint that monitors a metric;
    else the newest file."""
    last = directory / "last.ckpt"
    if last.is_file():
        state = load_checkpoint(last, mmap=True)  # only the callbacks' state is read, not the weights
        for key, callback_state in state.get("callbacks", {}).items():
            monitors = key.startswith("ModelCheckpoint") and callback_state.get("monitor")
            if monitors and callback_state.get("best_model_path"):
                # By name: the run directory may have moved since the absolute path was recorded.
                best = directory / Path(callback_state["best_model_path"]).name
                if best.is_file():
                    return best
    checkpoints = list(directory.glob("*.ckpt"))
    return max(checkpoints, key=lambda p: p.stat().st_mtime) if checkpoints else None


def checkpoint_filename(monitor: str) -> str:
    """A best checkpoint's file name, after the metric it is chosen by: ``loss/val`` gives
    ``epoch=3-step=316-loss_val=0.0213.ckpt``, ``val/acc`` gives ``...-val_acc=0.9937.ckpt``."""
    return f"epoch={{epoch}}-step={{step}}-{monitor.replace('/', '_')}={{{monitor}:.4f}}"


def check_run_name(run_name: str | None) -> None:
    """A run name is one folder name (:func:`binclf.paths.folder_name`), of plain characters, and not one
    that binclf's own run folders take."""
    if run_name is None:
        return
    folder_name(run_name, "--run_name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=,+-]*", run_name) or _VERSION.fullmatch(run_name):
        raise ValueError(
            f"--run_name {run_name!r}: a run name is one folder name of letters, digits and . _ = , + - "
            "(not starting with one of those signs), other than version_N"
        )


class RunFolder:
    """The folder one command logs into: the run it evaluates or continues, or a new one it claims under
    ``root`` (the next ``version_N``, or the version the logger names)."""

    def __init__(self, root: Path | None, path: Path | None = None) -> None:
        self.root = root
        self.path = path
        self.claimed = False  # created by this command, so this command may remove it
        self._created_root = False

    def claim(self, version: int | str | None = None) -> Path:
        """Create a new run folder. ``mkdir`` fails when another process has just made the same folder, so
        runs started at the same moment in the same place each get their own, where a logger that picks
        ``N`` by listing would give both the same one. The folder of a version the logger names must hold no
        run; if it is there already, it is not this command's to remove."""
        self._created_root = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        if version is not None:
            path = self.root / (f"version_{version}" if isinstance(version, int) else str(version))
            if (path / "config.yaml").exists() or run_checkpoints(path):
                raise ValueError(
                    f"trainer.logger.version: {path} holds a run already; leave the version out for the next "
                    "version_N"
                )
            with contextlib.suppress(FileExistsError):  # a folder made for it (a sweep run) stays its maker's
                path.mkdir()
                self.claimed = True
            self.path = path
            return path
        taken = [int(m.group(1)) for p in self.root.iterdir() if (m := _VERSION.fullmatch(p.name))]
        for number in itertools.count(max(taken, default=-1) + 1):
            with contextlib.suppress(FileExistsError):
                (self.root / f"version_{number}").mkdir()
                self.path, self.claimed = self.root / f"version_{number}", True
                return self.path
        raise AssertionError("itertools.count never ends")

    def checkpoints(self) -> list[Path]:
        return run_checkpoints(self.path) if self.path is not None else []

    def remove_if_unfinished(self) -> bool:
        """Remove the folder if this command created it and it holds no checkpoint: a config and a few
        events would look like a finished run. Returns whether it was removed."""
        if not self.claimed or self.checkpoints() or not self.path.is_dir():
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        if self._created_root and not any(self.root.iterdir()):
            self.root.rmdir()
        return True

    def config_name(self, command: str, resumes: bool) -> str:
        """The file a command saves its config as: ``config.yaml`` for a new fit, the record of how the run
        began; every later command in the run adds its own beside it (``config.resumed-1.yaml``,
        ``config.test-1.yaml``, ...), and nothing is overwritten."""
        if command == "fit" and not resumes:
            return "config.yaml"
        label = "resumed" if command == "fit" else command
        names = (f"config.{label}-{n}.yaml" for n in itertools.count(1))
        return next(name for name in names if not (self.path / name).exists())


def _summary(data_class: type, settings: dict[str, Any]) -> str:
    """The data class and the settings in which ``settings`` differ from its defaults, for one line."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(data_class).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    shown = [
        f"{key} {_show(value)}"
        for key, value in settings.items()
        if key not in defaults or not _same_value(value, defaults[key])
    ]
    return ", ".join([data_class.__name__, *shown[:4]]) + (", …" if len(shown) > 4 else "")


def _score(contents: dict[str, Any] | None) -> str:
    """`` (loss/val 0.0213)``: the metric the checkpoint callback watched, as it stood at this checkpoint."""
    for key, state in (contents or {}).get("callbacks", {}).items():
        score = state.get("current_score") if key.startswith("ModelCheckpoint") else None
        if score is not None and state.get("monitor"):
            return f" ({state['monitor']} {float(score):.4g})"
    return ""


def _short(class_path: str) -> str:
    """A class by its name alone: ``binclf.data.TwoGaussianDataModule`` and the module it lives in name the
    same class."""
    return class_path.rsplit(".", 1)[-1]


def _same_value(a: Any, b: Any) -> bool:
    """Equal as settings: lists and tuples alike, and paths that name the same file from here."""
    if isinstance(a, str) and isinstance(b, str):
        return a == b or os.path.normpath(a) == os.path.normpath(b)
    return _plain(a) == _plain(b)


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _show(value: Any) -> str:
    """A setting's value for a one-line message, shortened."""
    text = str(_plain(value))
    return text if len(text) <= 60 else f"{text[:57]}..."
