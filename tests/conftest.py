"""Shared fixtures: every end-to-end test runs the real CLI on a shrunken copy of the default config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DEFAULT_CONFIG, SMALL

from binclf.cli import BinclfCLI, run_command
from binclf.main import prepare_process


def pytest_configure(config: pytest.Config) -> None:
    """The tests that press Ctrl-C stand for a user at a terminal. A shell starts a background job (``make
    test &``) with SIGINT ignored, which the sweep rightly leaves ignored; here it is Python's default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def binclf_process_state() -> None:
    """What the ``binclf`` command sets up in its process before it runs: the tests run commands in their own
    process, and pytest gives each test the warning filters it started with."""
    prepare_process()


@pytest.fixture(scope="session")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``last.ckpt`` of one small fit, shared by the tests that read, damage or imitate a checkpoint.
    Tests copy it before they change it."""
    root = tmp_path_factory.mktemp("fitted")
    cwd, argv = os.getcwd(), sys.argv
    os.chdir(root)
    sys.argv = ["binclf"]
    try:
        run_command(["fit", "-c", str(DEFAULT_CONFIG), *SMALL, "--trainer.max_epochs=1"])
    finally:
        os.chdir(cwd)
        sys.argv = argv
    return root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.fixture
def default_config() -> Path:
    return DEFAULT_CONFIG


@pytest.fixture
def binclf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run ``binclf <subcommand> -c configs/default.yaml <SMALL> <extra>`` in-process, inside ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])  # LightningCLI warns when it gets both argv and args

    def run(subcommand: str, *extra: str, small: bool = True) -> BinclfCLI:
        return run_command([subcommand, "-c", str(DEFAULT_CONFIG), *(SMALL if small else []), *extra])

    return run


@pytest.fixture
def binclf_process(tmp_path: Path):
    """Like ``binclf``, but through the installed console script in a process of its own."""
    script = str(Path(sys.executable).parent / "binclf")

    def run(subcommand: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        command = [script, subcommand, "-c", str(DEFAULT_CONFIG), *SMALL, *extra]
        environment = {**os.environ, **(env or {})}
        return subprocess.run(
            command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False, env=environment
        )

    return run
