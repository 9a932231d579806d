"""Hostile sweep inputs, generated: names, grid keys and values, and seeds, through ``binclf-sweep``'s own
``main`` with its runs left out (``nothing_runs``). Each must end in a result or in one line, and change
nothing outside the sweep's own folder. ``make fuzz`` tries many more (``tests/hostile.py``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from helpers import DEFAULT_CONFIG
from hostile import NUMBERS, STRINGS, Sentinels, command, examples, problems, verdict, working_in
from hypothesis import given
from hypothesis import strategies as st


@given(
    name=st.one_of(
        st.sampled_from(["", ".", "..", "../../outside", "/tmp", "a/b", "runs", "ok"]), st.text(max_size=8)
    ),
    key=st.sampled_from(
        ["data.scale", "data.path", "seed_everything", "trainer.max_epochs", "a/../b", "data.x/y"]
    ),
    values=st.lists(st.one_of(NUMBERS, STRINGS), min_size=1, max_size=3),
    seeds=st.lists(st.integers(-(2**64), 2**64), min_size=1, max_size=3),
)
@examples("sweeps")
def test_hostile_sweep_inputs_stay_in_the_sweeps_folder_or_are_refused_in_one_line(
    name, key, values, seeds, nothing_runs
):
    from binclf.study.sweep import main

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        one_folder = name not in ("", ".", "..") and "/" not in name and "\0" not in name
        sentinels = Sentinels(root, own=(f"work/lightning_logs/sweeps/{name}",) if one_folder else ())
        arguments = [
            "--name",
            name,
            "--grid",
            json.dumps({key: values}, default=str),
            "--seeds",
            json.dumps(seeds),
        ]
        arguments += ["--base_config", str(DEFAULT_CONFIG), "--steps", "2", "--workers", "1"]
        with working_in(root / "work"):
            outcome = command(lambda: main(arguments))
        found = problems(outcome) + sentinels.changed()
        if any(not 0 <= seed < 2**32 for seed in seeds) and outcome.status == 0:
            found.append("a seed numpy cannot take is not refused")
        verdict("sweeps", " ".join(arguments), found)


@pytest.fixture
def nothing_runs(monkeypatch):
    """The sweep as it is, but its runs: what it does with its inputs, its folder and its reports."""
    from binclf.study import sweep

    monkeypatch.setattr(sweep, "check_arguments", lambda run: None)
    monkeypatch.setattr(sweep, "run_sweep", lambda *args, **kwargs: {})
