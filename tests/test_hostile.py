"""Hostile input, generated: checkpoints, configs and data files made from real ones by
Hypothesis, each run through the real command. Every one must end in a result, or in one line that names
what is wrong and a non-zero status: never a traceback, never a class built that binclf does not build from
a checkpoint, never a file changed outside the command's own folders, never unbounded memory.

``make test`` tries a fixed set of examples (the ``ci`` profile in ``tests/hostile.py``); ``make fuzz``
tries many more. The sweep's inputs are tried in ``tests/study/test_sweep_hostile.py``.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
import yaml
from helpers import DEFAULT_CONFIG, SMALL
from hostile import (
    MEMORY_BOUND_BYTES,
    NUMBERS,
    STRINGS,
    Sentinels,
    command,
    examples,
    peak_memory,
    problems,
    verdict,
    working_in,
)
from hypothesis import given
from hypothesis import strategies as st

from binclf.main import cli_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# A fit of a few steps, so that an example that passes every check costs seconds.
QUICK = [*SMALL, "--trainer.max_epochs=1", "--trainer.max_steps=3", "--trainer.limit_val_batches=1"]
PLANTED = """from pathlib import Path
Path('{marker}').touch()

class Net:
    def __init__(self, *args, **kwargs):
        Path('{marker}').touch()
"""


TENSOR_KINDS = [
    "sparse",
    "meta",
    "complex",
    "quantized",
    "strided",
    "integer",
    "empty",
    "scalar",
    "nan",
    "large",
]


def tensor(kind: str, like: torch.Tensor | None = None) -> torch.Tensor:
    shape = tuple(like.shape) if isinstance(like, torch.Tensor) and like.dim() else (4, 4)
    base = torch.ones(shape)
    return {
        "sparse": lambda: base.to_sparse(),
        "meta": lambda: torch.empty(shape, device="meta"),
        "complex": lambda: base.to(torch.complex64),
        "quantized": lambda: torch.quantize_per_tensor(base, 0.1, 0, torch.qint8),
        "strided": lambda: torch.ones(shape[0], 2 * shape[-1])[..., ::2] if len(shape) > 1 else base,
        "integer": lambda: base.long(),
        "empty": lambda: torch.empty(0),
        "scalar": lambda: torch.tensor(1.0),
        "nan": lambda: torch.full(shape, float("nan")),
        "large": lambda: torch.zeros(1_000_000),
    }[kind]()


VALUES = st.one_of(
    NUMBERS,
    STRINGS,
    st.none(),
    st.booleans(),
    st.lists(NUMBERS, max_size=3),
    st.dictionaries(st.sampled_from(["class_path", "init_args", "lr", "x"]), NUMBERS | STRINGS, max_size=2),
    st.sampled_from(TENSOR_KINDS).map(lambda kind: ("tensor", kind)),
)


def paths(value: Any, prefix: tuple = (), depth: int = 6) -> list[tuple]:
    """Every key path into a checkpoint's nested dicts and lists."""
    found = [prefix] if prefix else []
    if depth == 0:
        return found
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key), depth - 1)
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            found += paths(item, (*prefix, index), depth - 1)
    return found


def changed(checkpoint: dict, path: tuple, new: Any) -> dict:
    """A copy of ``checkpoint`` with the value at ``path`` dropped (``new`` is ``...``) or replaced."""
    result = copy.deepcopy(checkpoint)
    parent = result
    for key in path[:-1]:
        if not isinstance(parent, dict | list):
            raise TypeError("an earlier change replaced this part")
        parent = parent[key]
    if not isinstance(parent, dict | list):
        raise TypeError("an earlier change replaced this part")
    if new is ...:
        del parent[path[-1]]
    elif isinstance(new, tuple) and new[:1] == ("tensor",):
        parent[path[-1]] = tensor(new[1], parent[path[-1]])
    else:
        parent[path[-1]] = new
    return result


@pytest.fixture(scope="module")
def real_checkpoint(fitted) -> dict:
    return torch.load(fitted, weights_only=True)


@pytest.fixture(scope="module")
def checkpoint_paths(real_checkpoint) -> dict[str, list[tuple]]:
    """The checkpoint's key paths, by the part they lie in: each part is as likely to be changed."""
    parts: dict[str, list[tuple]] = {}
    for path in paths(real_checkpoint):
        parts.setdefault(str(path[0]), []).append(path)
    return parts


def classes_the_config_names() -> list[str]:
    """Every class path ``binclf fit -c configs/default.yaml`` names, as ``--print_config`` shows them."""
    with mock.patch.object(sys, "argv", ["binclf"]):  # pytest's own arguments are not the command's
        outcome = command(lambda: cli_main(["fit", "-c", str(DEFAULT_CONFIG), "--print_config"]))
    names = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("class_path"), str):
                names.append(value["class_path"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(yaml.safe_load(outcome.out))
    return sorted(set(names))


@given(data=st.data())
@examples("checkpoints")
def test_a_checkpoint_changed_anywhere_is_used_or_refused_in_one_line(
    data, real_checkpoint, checkpoint_paths
):
    mutations = data.draw(st.integers(1, 3), label="mutations")
    checkpoint, described = real_checkpoint, []
    for _ in range(mutations):
        part = data.draw(st.sampled_from(sorted(checkpoint_paths)), label="part")
        path = data.draw(st.sampled_from(checkpoint_paths[part]), label="path")
        new = data.draw(st.one_of(st.just(...), VALUES), label="new value")
        try:
            checkpoint = changed(checkpoint, path, new)
        except (KeyError, IndexError, TypeError):
            continue  # the path went with an earlier change
        shown = "dropped" if new is ... else f"= {new[1]} tensor" if isinstance(new, tuple) else f"= {new!r}"
        described.append(f"{'.'.join(map(str, path))} {shown[:80]}")
    role = data.draw(st.sampled_from([None, "network", "optimizer", "lr_scheduler"]), label="class role")
    if role is not None:
        name = data.draw(st.sampled_from([*CONFIG_CLASSES, "planted.Net"]), label="class")
        with contextlib.suppress(KeyError, IndexError, TypeError):  # hyper_parameters went already
            checkpoint = changed(
                checkpoint, ("hyper_parameters", role), {"class_path": name, "init_args": {}}
            )
            described.append(f"hyper_parameters.{role} = {name}")
    subcommand = data.draw(st.sampled_from(["test", "validate", "predict", "fit"]), label="command")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        marker = root / "code_ran"
        (root / "work").mkdir()
        (root / "work" / "planted.py").write_text(PLANTED.format(marker=marker))
        torch.save(checkpoint, root / "work" / "crafted.ckpt")
        sentinels = Sentinels(root, own=("work/lightning_logs",))
        before = peak_memory()
        with working_in(root / "work"):
            outcome = command(
                lambda: cli_main(
                    [subcommand, "-c", str(DEFAULT_CONFIG), *QUICK, "--ckpt_path", "crafted.ckpt"]
                )
            )
        found = problems(outcome) + sentinels.changed()
        if marker.exists() or "planted" in sys.modules:
            found.append("a class the checkpoint names was imported or built")
        sys.modules.pop("planted", None)
        if peak_memory() - before > MEMORY_BOUND_BYTES:
            found.append(f"memory grew by {(peak_memory() - before) / 1e9:.1f} GB")
        verdict("checkpoints", f"{subcommand}: {'; '.join(described)}", found)


CONFIG_CLASSES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def config_classes() -> None:
    CONFIG_CLASSES[:] = classes_the_config_names()


# The settings a config may push past their bounds, with values at and past them.
SETTINGS = {
    "trainer": [
        "max_epochs",
        "max_steps",
        "val_check_interval",
        "check_val_every_n_epoch",
        "log_every_n_steps",
        "accumulate_grad_batches",
        "limit_train_batches",
        "limit_val_batches",
        "gradient_clip_val",
        "num_sanity_val_steps",
        "devices",
        "precision",
        "accelerator",
        "default_root_dir",
    ],
    "data": [
        "num_samples",
        "dim",
        "mean_a",
        "mean_b",
        "scale",
        "batch_size",
        "eval_batch_size",
        "num_val_samples",
        "num_test_samples",
        "num_predict_points",
        "standardize",
        "seed",
    ],
    "model": ["calibration"],
    "checkpoint": ["monitor", "mode", "save_top_k", "every_n_epochs", "dirpath", "filename"],
    "predictions": ["filename", "threshold"],
    "figures": ["bins", "calibration_bins", "grid_points"],
}
TAGS = [
    "!!binary aGVsbG8=",
    "!!python/object/apply:os.system ['true']",
    "!!timestamp 2001-12-14",
    "!custom x",
    "!!set {a, b}",
    "!!float .nan",
    "!!int 0x7fffffffffffffff",
]


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    """A config as a person or an attacker might write it: the default config's sections, with settings
    pushed to and past their bounds, YAML tags, anchors and aliases, duplicate keys and deep nesting."""
    lines = []
    for section, keys in SETTINGS.items():
        chosen = draw(st.lists(st.sampled_from(keys), max_size=3, unique=True))
        if not chosen:
            continue
        lines.append(f"{section}:")
        for key in chosen:
            value = draw(st.one_of(VALUES.filter(lambda v: not isinstance(v, tuple)), st.sampled_from(TAGS)))
            text = value if isinstance(value, str) and value in TAGS else json.dumps(value, default=str)
            lines.append(f"  {key}: {text}")
            if draw(st.booleans()):  # the same key twice: the last would win without a word
                lines.append(f"  {key}: {json.dumps(draw(NUMBERS))}")
    if draw(st.booleans()):
        depth = draw(st.integers(1, 80))
        lines.append("deep: " + "[" * depth + "1" + "]" * depth)
    if draw(st.booleans()):
        lines += ["a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]", "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]"]
        lines += ["c: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]"]
    return "\n".join(lines) + "\n"


@given(text=config_texts(), subcommand=st.sampled_from(["fit", "test"]))
@examples("configs")
def test_a_hostile_config_is_used_or_refused_in_one_line(text, subcommand, fitted):
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "work").mkdir()
        (root / "work" / "hostile.yaml").write_text(text)
        sentinels = Sentinels(root, own=("work/lightning_logs",))
        before = peak_memory()
        extra = ["--ckpt_path", str(fitted)] if subcommand == "test" else []
        with working_in(root / "work"):
            outcome = command(
                lambda: cli_main(
                    [
                        subcommand,
                        "-c",
                        str(DEFAULT_CONFIG),
                        "-c",
                        "hostile.yaml",
                        "--trainer.max_steps=3",
                        *extra,
                    ]
                )
            )
        found = problems(outcome) + sentinels.changed()
        if peak_memory() - before > MEMORY_BOUND_BYTES:
            found.append(f"memory grew by {(peak_memory() - before) / 1e9:.1f} GB")
        verdict("configs", f"{subcommand} with\n{text}", found)


@st.composite
def tables(draw: st.DrawFn) -> tuple[bytes, str]:
    """A CSV table with a label column: cells of every kind, rows of other lengths, formulas, encodings."""
    columns = draw(st.integers(1, 4))
    rows = draw(st.integers(0, 12))
    cell = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(str),
        st.integers(-(10**20), 10**20).map(str),
        st.sampled_from(
            [
                "",
                "=1+1",
                "+cmd",
                "-2",
                "@SUM(A1)",
                '=HYPERLINK("http://x","y")',
                "nan",
                "inf",
                "1e400",
                '"quoted, comma"',
                "\t",
                "é",
            ]
        ),
    )
    label = st.sampled_from(["spam", "ham", "=spam", "+ham", "0", "1", ""])
    header = ["label", *[draw(st.sampled_from([f"x{i}", "=x", "", "label", "x0"])) for i in range(columns)]]
    lines = [",".join(header)]
    for _ in range(rows):
        width = draw(st.sampled_from([columns, columns, columns, columns - 1, columns + 1]))
        lines.append(",".join([draw(label), *[draw(cell) for _ in range(max(width, 0))]]))
    text = "\n".join(lines) + "\n"
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    return text.encode(encoding, errors="replace"), draw(st.sampled_from(["fit", "predict"]))


@given(table=tables())
@examples("tables")
def test_a_hostile_table_trains_and_predicts_or_is_refused_in_one_line(table, capsys):
    data, subcommand = table
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "work").mkdir()
        (root / "work" / "table.csv").write_bytes(data)
        sentinels = Sentinels(root, own=("work/lightning_logs",))
        config = [str(CONFIGS / "tabular_example.yaml"), "--data.path=table.csv", "--data.id_column=null"]
        config += ["--data.label_names=null", "--trainer.max_steps=3", "--trainer.enable_progress_bar=false"]
        with working_in(root / "work"):
            outcome = command(lambda: cli_main(["fit", "-c", *config]))
            if outcome.status == 0 and subcommand == "predict":
                outcome = command(
                    lambda: cli_main(["predict", "-c", *config, "--data.predict_path=table.csv"])
                )
        found = problems(outcome) + sentinels.changed()
        for predictions in (root / "work" / "lightning_logs").rglob("predictions*.csv"):
            for row in csv.reader(predictions.open()):
                formulas = [cell for cell in row if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]
                if any(not _number(cell) for cell in formulas):
                    found.append(f"a formula in predictions.csv: {formulas[0]!r}")
        verdict("tables", f"{subcommand} of\n{data[:1500]!r}", found)


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True
