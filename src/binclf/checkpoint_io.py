"""Lightning's checkpoint I/O for binclf: checkpoints written whole (:func:`binclf.safe_io.atomic_write`) and
read as :mod:`binclf.checkpoint` reads them, as plain data, checked."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from binclf.checkpoint import load_checkpoint
from binclf.safe_io import atomic_write


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
