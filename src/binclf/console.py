"""Console output: the Lightning messages that do not apply to this project, silenced in one place.

Each filter names one message. The CLI calls this, so DDP child processes (which re-run the CLI) get the
same filters.
"""

from __future__ import annotations

import logging
import warnings


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_inapplicable_messages() -> None:
    """Silence the advice that does not apply here; leave every other warning alone."""
    # An advertisement printed on every run (upstream Lightning-AI/pytorch-lightning#21430).
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropMessages("litlogger"))
    # A deprecation inside Lightning itself, not in this code (upstream #21326).
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
    # `test` and `predict` load a checkpoint from the fit run's folder while logging into a folder of their
    # own; that is by design here.
    warnings.filterwarnings("ignore", message=r".*The dirpath has changed from")
