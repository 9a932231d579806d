"""Run folders: which ``version_N`` a command logs into, which checkpoint it evaluates or resumes (and the
rules for resuming), and what it leaves behind when it fails.

Plain LightningCLI evaluates the untrained model when given no ``--ckpt_path`` (or ``last``), cannot resolve
``best`` outside the process that ran ``fit``, and lets two runs started together share a folder. Here the
folder is worked out once from the unbuilt config, claimed by creating it, and checkpoints are found from
the files a fit run leaves.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import shutil
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_only

from binclf.from_checkpoint import checked_model_settings, classes_named_in, differences
from binclf.monitoring import RUN_LOGGER, console
from binclf.safe_io import CheckpointError, load_checkpoint

_VERSION = re.compile(r"version_(\d+)")
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=,+-]*")


def check_run_name(run_name: str | None) -> None:
    """A run name is one folder name, and not one that binclf's own run folders take."""
    if run_name is not None and (not _RUN_NAME.fullmatch(run_name) or _VERSION.fullmatch(run_name)):
        raise ValueError(
            f"--run_name {run_name!r}: a run name is one folder name of letters, digits and . _ = , + - "
            "(not starting with one of those signs), other than version_N"
        )


def log_root(trainer: Namespace, run_name: str | None = None) -> Path | None:
    """Where the configured logger keeps its ``version_N`` runs, read from the config before it is built
    (under ``run_name`` when there is one); ``None`` for a logger that names its own folders, or none."""
    logger = trainer.get("logger")
    default_root = Path(trainer.get("default_root_dir") or ".")
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    if logger is None or logger is True:  # Lightning's default, which binclf makes a RunLogger
        base = default_root / "lightning_logs"
    elif not isinstance(logger, (dict, Namespace)):
        return None
    else:
        init_args = logger.get("init_args") or {}
        save_dir = init_args.get("save_dir") or (
            default_root if logger.get("class_path") == RUN_LOGGER else None
        )
        if not save_dir:
            return None
        base = Path(save_dir) / (init_args.get("name") or "lightning_logs")
    return base / run_name if run_name else base


def checkpoint_filename(monitor: str) -> str:
    """A best checkpoint's file name, after the metric it is chosen by: ``loss/val`` gives
    ``epoch=3-step=316-loss_val=0.0213.ckpt``, ``val/acc`` gives ``...-val_acc=0.9937.ckpt``."""
    return f"epoch={{epoch}}-step={{step}}-{monitor.replace('/', '_')}={{{monitor}:.4f}}"


def run_dir(trainer: Trainer) -> Path:
    """A built trainer's run folder (``lightning_logs/version_N``) as the global-zero process knows it.

    Unlike ``trainer.log_dir`` this is no collective call, so rank-0-only code and code that runs after the
    DDP process group has gone can use it. Other ranks may see another version number.
    """
    logger = trainer.logger
    return Path((logger.log_dir if logger is not None else None) or trainer.default_root_dir)


class RunFolder:
    """The ``root/version_N`` folder one command logs into: an existing run it resumes, or one it claims.

    ``root`` is :func:`log_root` of the command's config, worked out once; ``None`` when the logger names
    its own folders, and then nothing here applies.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.version: int | None = None
        self.claimed = False  # created by this command, so this command may remove it
        self._created_root = False

    @property
    def path(self) -> Path | None:
        return None if self.root is None or self.version is None else self.root / f"version_{self.version}"

    def resume(self, version: int) -> None:
        self.version = version

    def claim(self) -> None:
        """Create the next free ``version_N``. ``mkdir`` fails when another process has just made the same
        folder, so runs started at the same moment in the same place each get their own, where a logger
        that picks ``N`` by listing would give both the same one."""
        self._created_root = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        taken = [int(match.group(1)) for p in self.root.iterdir() if (match := _VERSION.fullmatch(p.name))]
        for version in itertools.count(max(taken, default=-1) + 1):
            try:
                (self.root / f"version_{version}").mkdir()
            except FileExistsError:
                continue
            self.version, self.claimed = version, True
            return

    def checkpoints(self) -> list[Path]:
        return sorted((self.path / "checkpoints").glob("*.ckpt")) if self.path is not None else []

    def remove_if_unfinished(self) -> bool:
        """Remove the folder if this command created it and it holds no checkpoint: a config and a few
        events would look like a finished run. Returns whether it was removed."""
        if not self.claimed or self.checkpoints() or not self.path.is_dir():
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        if self._created_root and not any(self.root.iterdir()):
            self.root.rmdir()
        return True

    def config_name(self, command: str) -> str:
        """The name under which a later command in this run (``resumed``, ``test``, ``predict``, ...) saves
        its config: ``config.yaml`` stays the record of how the run began, and nothing is overwritten."""
        return next(
            name
            for name in (f"config.{command}-{n}.yaml" for n in itertools.count(1))
            if not (self.path / name).exists()
        )

    def point_logger_here(self, trainer: Namespace, command: str) -> str | None:
        """Make the configured logger log into this folder: the resumed or evaluated run's, or a
        ``version_N`` claimed now. Returns the name to save the command's config under in a run that has
        one already (``None``: ``config.yaml``).

        Applies to binclf's default logger (:class:`~binclf.monitoring.tensorboard.RunLogger`, also where
        a config asks for Lightning's default) and to a TensorBoardLogger or CSVLogger without a version;
        other loggers name their own folders.
        """
        logger = trainer.get("logger")
        if logger is None or logger is True:  # Lightning's default logger, as binclf's
            logger = trainer.logger = Namespace(class_path=RUN_LOGGER, init_args=Namespace())
        if not isinstance(logger, Namespace):
            return None
        logger.init_args = logger.get("init_args") or Namespace()
        class_path = str(logger.get("class_path"))
        if class_path == RUN_LOGGER or class_path.endswith(".TensorBoardLogger"):
            logger.init_args.default_hp_metric = False  # binclf writes the HParams row itself
        versioned = class_path == RUN_LOGGER or class_path.endswith((".TensorBoardLogger", ".CSVLogger"))
        if self.root is None or not versioned or logger.init_args.get("version") is not None:
            return None
        config_name = None
        if self.version is not None:  # a resumed run, or the run of the checkpoint evaluated
            config_name = self.config_name("resumed" if command == "fit" else command)
        elif rank_zero_only.rank == 0:
            self.claim()
        else:
            return None  # other DDP ranks write no logs; Lightning hands them rank 0's folder
        # root is save_dir/name, and under a run name one level deeper. Where neither the logger nor the
        # trainer names a folder, the current one, as a full path, as Lightning's default logger has it.
        named = logger.init_args.get("save_dir") or trainer.get("default_root_dir")
        logger.init_args.save_dir = str(self.root.parent if named else self.root.parent.absolute())
        logger.init_args.name = self.root.name
        logger.init_args.version = self.version
        return config_name

    def version_of(self, checkpoint: Path) -> int | None:
        """``N`` when ``checkpoint`` lies in ``root/version_N/checkpoints``: the run it belongs to."""
        run = checkpoint.resolve().parent.parent
        match = _VERSION.fullmatch(run.name)
        in_a_run = checkpoint.resolve().parent.name == "checkpoints" and self.root is not None
        if match and in_a_run and run.parent == self.root.resolve():
            return int(match.group(1))
        return None


def unused_path(path: Path) -> Path:
    """``path``, or ``stem-2.suffix``, ``stem-3.suffix``, ... if it is taken: a command that writes into
    an existing run adds its files, and never replaces another command's."""
    candidates = (path.with_name(f"{path.stem}-{n}{path.suffix}") for n in itertools.count(2))
    return path if not path.exists() else next(p for p in candidates if not p.exists())


def run_checkpoint_folders(root: Path) -> list[Path]:
    """The ``checkpoints`` folders of the ``version_N`` runs under ``root`` that hold any checkpoint, newest
    run first. Folders that evaluation commands of checkpoints outside any run create hold none."""
    runs = []
    for folder in root.glob("version_*"):
        match = _VERSION.fullmatch(folder.name)
        if match and any((folder / "checkpoints").glob("*.ckpt")):
            runs.append((int(match.group(1)), folder / "checkpoints"))
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


def find_checkpoint(
    request: str | None, root: Path | None, dirpath: str | None, data: dict[str, Any] | None = None
) -> Path:
    """Turn ``--ckpt_path`` into a file: ``None`` or ``best`` gives the best checkpoint of the latest run,
    ``last`` its ``last.ckpt``, anything else is taken as a path.

    Runs are looked for under the logger's ``root``, or in ``--checkpoint.dirpath`` where one is set. With
    ``data`` (the command's data config), only runs trained on the same kind of data count: the same data
    class, and the same ``dim`` where the data has one. Raises ``FileNotFoundError`` or ``ValueError`` with a
    message for the user.
    """
    if request not in (None, "best", "last"):
        path = Path(request)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return path
    if dirpath is None and root is None:
        raise ValueError(
            "cannot find checkpoints without a logger or --checkpoint.dirpath; pass --ckpt_path FILE"
        )
    search_root = Path(dirpath) if dirpath else root
    folders = [search_root] if dirpath else run_checkpoint_folders(root)
    skipped = None
    for folder in folders:
        found = best_checkpoint(folder) if request != "last" else folder / "last.ckpt"
        if found is None or not found.is_file():
            continue
        mismatch = other_kind_of_data(load_checkpoint(found, mmap=True), data) if data else None
        if mismatch is None:
            return found
        skipped = skipped or (folder.parent, mismatch)
    if skipped is not None:
        run, mismatch = skipped
        raise FileNotFoundError(
            f"no run under {search_root} was trained on this kind of data: the newest, {run}, was trained on "
            f"{mismatch}; pass --ckpt_path FILE to evaluate a checkpoint anyway"
        )
    wanted = "last.ckpt" if request == "last" else "checkpoint"
    raise FileNotFoundError(
        f"no {wanted} found under {search_root}: run `binclf fit` first, or pass --ckpt_path FILE"
    )


def other_kind_of_data(checkpoint: dict[str, Any], data: dict[str, Any]) -> str | None:
    """What sets a checkpoint's data apart from the data a command is configured with (another data class,
    another input dimension), in words; ``None`` when it is the same kind of data."""
    stored = checkpoint.get("datamodule_hyper_parameters", {})
    stored_class, now_class = stored.get("_class_path"), data.get("class_path")
    if stored_class is not None and _short(stored_class) != _short(now_class):
        return f"{_short(stored_class)}, not {_short(now_class)} as this command's config says"
    stored_dim, now_dim = stored.get("dim"), (data.get("init_args") or {}).get("dim")
    if stored_dim is not None and now_dim is not None and stored_dim != now_dim:
        return f"data of dim={stored_dim}, not dim={now_dim} as this command's config says"
    return None


def _short(class_path: str | None) -> str | None:
    """A class by its name alone: ``binclf.data.TwoGaussianDataModule`` and the module it lives in name the
    same class."""
    return class_path.rsplit(".", 1)[-1] if class_path else class_path


def changed_data_settings(checkpoint: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """How the data settings of a parsed config (``class_path`` and ``init_args``) differ from those a
    checkpoint was trained with, one ``"data.key: old in the checkpoint, new now"`` per setting: a resume
    on other data is refused unless asked for."""
    stored = {
        k: v for k, v in checkpoint.get("datamodule_hyper_parameters", {}).items() if k != "_instantiator"
    }
    stored_class = stored.pop("_class_path", data.get("class_path"))
    if _short(stored_class) != _short(data.get("class_path")):
        return [f"data: {stored_class} in the checkpoint, {data.get('class_path')} now"]
    now = data.get("init_args") or {}

    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    return [
        f"data.{key}: {stored[key]!r} in the checkpoint, {now[key]!r} now"
        for key in sorted(stored.keys() & now.keys())
        if plain(stored[key]) != plain(now[key])
    ]


def check_resume(
    path: Path, checkpoint: dict[str, Any], config: Namespace, model_class: type, run: RunFolder
) -> None:
    """``fit --ckpt_path``: a run continues in its own folder only from its ``last.ckpt``; from any other of
    its checkpoints (``best``, an epoch file) it would rewind that run and overwrite its ``last.ckpt``, so
    it becomes a new run. Other model settings than the checkpoint's are refused; training on other data
    than the checkpoint's is refused unless asked for."""
    own_classes = classes_named_in(config.as_dict())
    trained = checked_model_settings(checkpoint.get("hyper_parameters", {}), path, model_class, own_classes)
    configured = {}
    for key, value in config.model.as_dict().items():
        with contextlib.suppress(CheckpointError):  # a setting the checkpoint could not hold either
            configured |= checked_model_settings({key: value}, path, model_class, own_classes)
    changed_model = differences(trained, configured)
    if changed_model:
        raise ValueError(
            f"--ckpt_path {path} was trained with other model settings ({'; '.join(changed_model)}): "
            "pass the settings it was trained with"
        )
    version = run.version_of(path)
    if version is not None and path.name == "last.ckpt":
        run.resume(version)
        console.expect_existing_checkpoints()
    elif version is not None:
        console.say(f"Starting a new run from {path}: only a run's last.ckpt continues in its own folder")
    changed = changed_data_settings(checkpoint, config.data.as_dict())
    if changed and not config.resume_with_other_data:
        raise ValueError(
            f"--ckpt_path {path} was trained with other data settings ({'; '.join(changed)}): "
            "pass the settings it was trained with, or --resume_with_other_data true to train it on "
            "this data"
        )
