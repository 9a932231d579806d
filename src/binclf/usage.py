"""What ``binclf --help`` says: binclf, its subcommands, and binclf's other installed commands. Plain text,
so that the console script answers it without importing Lightning; the CLI's parser prints the same."""

from __future__ import annotations

import ast
import difflib
import textwrap
from importlib import metadata, util
from pathlib import Path

SUBCOMMANDS = {
    "fit": "Train the model, in a run folder of its own (lightning_logs/version_N): the article's experiment "
    "by default, or the config given with -c. --ckpt_path last continues the latest run of this data.",
    "validate": "Score a run's best checkpoint on the validation split, on the data it was trained on: the "
    "latest run of this data, or the run that -c <run>/config.yaml or --ckpt_path names.",
    "test": "Score a run's best checkpoint on the test split, as validate chooses it: accuracy, loss, "
    "calibration, and, for data with an oracle, the Bayes rule and the logit as a log-likelihood ratio.",
    "predict": "Write p(b | x) and the logit of a run's best checkpoint, as validate chooses it, for the "
    "data's prediction points to predictions.csv in its run folder.",
}


def answered_at_once(args: list[str]) -> bool:
    """Print what ``binclf --version`` and ``binclf --help`` (or ``binclf`` alone) ask for, and say whether
    that was the command: answered without importing torch or Lightning, which takes seconds."""
    if args == ["--version"]:
        from binclf import __version__

        print(f"binclf {__version__}")
        return True
    if args in ([], ["--help"], ["-h"]):
        print(top_level_help(), end="")
        return True
    return False


def top_level_help() -> str:
    width = 100
    lines = [
        "usage: binclf [-h] [--version] {fit,validate,test,predict} [-c CONFIG] [--print_config] ...",
        "",
        "binclf trains a binary classifier with PyTorch Lightning and measures it against the best possible",
        "answer, the Bayes rule, where the data has one.",
        "",
        "subcommands:",
    ]
    lines += _listed(SUBCOMMANDS, 10, width)
    lines += [
        "",
        "options:",
        "  -h, --help            show this help and exit; binclf fit --help lists fit's settings",
        "  --version             print binclf's version and exit",
        "",
        "options of each subcommand (binclf fit --help lists them all):",
        "  -c, --config CONFIG   a YAML config, e.g. configs/default.yaml",
        "  --print_config        print the whole config, with the logger and progress bar in use, and exit",
    ]
    others = other_commands()
    if others:
        lines += ["", "other commands (each answers --help):", *_listed(others, 14, width)]
    return "\n".join([*lines, ""])


def _listed(descriptions: dict[str, str], name_width: int, width: int) -> list[str]:
    """Each name, then its description wrapped to ``width`` beside it."""
    indent = name_width + 4
    lines = []
    for name, description in descriptions.items():
        wrapped = textwrap.wrap(description, width - indent) or [""]
        lines += [f"  {name:<{name_width}}  {wrapped[0]}", *(f"{'':{indent}}{part}" for part in wrapped[1:])]
    return lines


def other_commands() -> dict[str, str]:
    """binclf's other console scripts, as installed, each with the first line of its module's docstring:
    read from the source, not imported, so that the help stays instant."""
    try:
        scripts = metadata.distribution("binclf").entry_points.select(group="console_scripts")
    except metadata.PackageNotFoundError:
        return {}
    commands = {}
    for script in sorted(scripts, key=lambda entry: entry.name):
        if script.name == "binclf":
            continue
        try:
            spec = util.find_spec(script.module)
        except ModuleNotFoundError:  # its package was removed after it was installed: nothing to run
            spec = None
        if spec is None or spec.origin is None:
            continue
        docstring = ast.get_docstring(ast.parse(Path(spec.origin).read_text())) or ""
        first = docstring.splitlines()[0].replace("``", "") if docstring else ""
        commands[script.name] = first.removeprefix(f"{script.name}:").strip()
    return commands


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate a mistyped ``name`` most likely meant, if any is close."""
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None
