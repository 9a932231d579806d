"""What a person sees of a run: the console, the diagnostic figures, the predictions file and TensorBoard."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

# binclf's default logger, by class path: read by the CLI's defaults and by the sweep, which never imports
# Lightning in its own process.
RUN_LOGGER = "binclf.monitoring.tensorboard.RunLogger"


def run_dir(trainer: Trainer) -> Path:
    """A built trainer's run folder (``lightning_logs/version_N``) as the global-zero process knows it.

    Unlike ``trainer.log_dir`` this is no collective call, so rank-0-only code and code that runs after the
    DDP process group has gone can use it. Other ranks may see another version number.
    """
    logger = trainer.logger
    return Path((logger.log_dir if logger is not None else None) or trainer.default_root_dir)
