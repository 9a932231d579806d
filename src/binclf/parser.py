"""The CLI's argument parser: help a person can read, and one line for a setting that does not parse."""

from __future__ import annotations

import re
from argparse import ArgumentError
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser


class BinclfArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, with help a person can read: where a setting takes any ``torch.nn.Module``,
    jsonargparse lists every subclass torch has imported, hundreds of lines; here binclf's own are listed,
    and the rest counted."""

    def format_help(self) -> str:
        def shorten(match: re.Match) -> str:
            names = re.sub(r"\s+", "", match.group(1)).split(",")
            own = [name for name in names if name.startswith(("binclf.networks.", "binclf.data."))]
            if len(names) <= 12:
                return match.group(0)
            return f"known subclasses: {', '.join(own)}, and {len(names) - len(own)} more)"

        return re.sub(r"known\s+subclasses:\s+([^)]*)\)", shorten, super().format_help())

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """A setting that does not parse ends the command with one line naming it, like any bad input
        (:func:`binclf.command.error_message`), instead of the whole usage, which ``--help`` shows."""
        raise ArgumentError(None, message) from ex
