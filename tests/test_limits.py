"""Memory a command would need is refused before it is allocated; BINCLF_MEMORY_LIMIT_GB moves the limit."""

from __future__ import annotations

import sys

import pytest
from helpers import DEFAULT_CONFIG, SMALL

from binclf.limits import MEMORY_LIMIT_VARIABLE, memory_limit, require_memory
from binclf.main import cli_main


def test_the_limit_is_half_the_machines_memory_unless_set(monkeypatch):
    monkeypatch.delenv(MEMORY_LIMIT_VARIABLE, raising=False)
    with open("/proc/meminfo") as meminfo:
        total_kb = int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1])
    assert memory_limit() == pytest.approx(total_kb * 1024 / 2, rel=0.01)
    monkeypatch.setenv(MEMORY_LIMIT_VARIABLE, "1000")
    assert memory_limit() == 1000 * 10**9
    require_memory("data.num_samples", 160 * 10**9, "data")  # allowed once the limit is raised
    monkeypatch.setenv(MEMORY_LIMIT_VARIABLE, "plenty")
    with pytest.raises(
        ValueError, match="BINCLF_MEMORY_LIMIT_GB must be a positive number of GB, got 'plenty'"
    ):
        memory_limit()


def test_a_lowered_limit_refuses_a_run_that_would_fit_the_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])
    monkeypatch.setenv(MEMORY_LIMIT_VARIABLE, "0.00002")  # 20 kB: less than the shrunken test split
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "-c", str(DEFAULT_CONFIG), *SMALL])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        "binclf: error: data.num_test_samples=1,000 with data.dim=1 would hold 24.0 kB of data in memory, "
        "more than BINCLF_MEMORY_LIMIT_GB allows (20.0 kB): lower it, or raise that limit"
    )
    assert not (tmp_path / "lightning_logs").exists()
