"""The CLI's argument parser: help a person can read, and one line for a setting that does not parse or a
command that does not exist."""

from __future__ import annotations

import inspect
import re
import sys
from argparse import ArgumentError
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from binclf.usage import SUBCOMMANDS, closest


def unknown_command(given: str) -> ArgumentError:
    """The error for a first argument that is no binclf subcommand: one line, with the closest one."""
    if given.startswith("-"):
        return ArgumentError(
            None, f"{given}: the subcommand comes first ({', '.join(SUBCOMMANDS)}), then its settings"
        )
    choices = ", ".join(repr(name) for name in SUBCOMMANDS)
    match = closest(given, list(SUBCOMMANDS))
    hint = f"; did you mean {match}?" if match else ""
    return ArgumentError(
        None, f"argument subcommand: invalid choice: {given!r} (choose from {choices}){hint}"
    )


class BinclfArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, with help a person can read: where a setting takes any ``torch.nn.Module``,
    jsonargparse lists every subclass torch has imported, hundreds of lines; here binclf's own are listed,
    and the rest counted.

    ``command`` is the binclf subcommand whose settings this parser reads; the parsers that jsonargparse
    makes inside it, for a class's settings, have none."""

    def __init__(self, *args: Any, command: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.command = command

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
        (:func:`binclf.command.error_message`), instead of the whole usage, which ``--help`` shows; a
        mistyped key with the closest one there is."""
        if "did you mean" not in message:  # a subcommand's parser has already said it
            message = self._with_closest_key(message)
        raise ArgumentError(None, message) from ex

    def _with_closest_key(self, message: str) -> str:
        """``message`` with the valid key nearest to the one it refuses, where one is near: a setting of
        the command (``--trainer.max_epochz``), or an argument of the class a setting names
        (``--data.sclae``)."""
        keys = sorted(set(re.findall(r"--[A-Za-z_][\w.]*", self.format_help())))
        unknown = re.match(r"unrecognized arguments: (--[\w.]+)", message)
        if unknown:
            match = closest(unknown[1], keys)
            return f"{message}; did you mean {match}?" if match else message
        in_a_file = re.fullmatch(r"Option '(\w+)' is not accepted", message)
        if in_a_file and self.command is not None:  # a key at the top level of a config file
            match = closest(f"--{in_a_file[1]}", keys)
            hint = f"; did you mean {match[2:]}?" if match else ""
            return f"{in_a_file[1]}: binclf {self.command} takes no setting {in_a_file[1]!r}{hint}"
        option = re.search(r"Option '(\w+)' is not accepted", message)
        setting = re.search(r'Parser key "([^"]+)"', message)
        class_path = re.search(r"class_path[= ]'([\w.]+)'", message)
        if not (option and setting and class_path):
            return message
        module, _, name = class_path[1].rpartition(".")
        # Already imported by the parser, which checked the option against it: nothing new is imported.
        cls = getattr(sys.modules.get(module), name, None)
        if cls is None:
            return message
        parameters = inspect.signature(cls).parameters.values()
        names = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        match = closest(option[1], names)
        if match is None:
            return message
        key = f"--{setting[1]}"
        return f"{key}.{option[1]}: {name} takes no argument {option[1]!r}; did you mean {key}.{match}?"
