"""``binclf-sweep --executor ray`` on a real two-node Ray cluster started on this machine.

Ray listens on the machine's network interface even when told 127.0.0.1; inside a network namespace that
holds nothing but loopback it uses 127.0.0.1 by itself. So the cluster and the sweeps run in such a
namespace (``unshare -n``, which needs root), driven by ``tests/study/ray_cluster.py``; where the namespace
cannot be made, these tests are skipped and say why.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import DEFAULT_CONFIG

from binclf.study.sweep import main

DRIVER = Path(__file__).with_name("ray_cluster.py")

pytestmark = pytest.mark.slow  # a Ray cluster and sweeps that submit to it


def _namespace_can_be_made() -> bool:
    try:
        command = ["unshare", "-n", "true"]
        return subprocess.run(command, capture_output=True, timeout=60, check=False).returncode == 0
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict:
    """What tests/ray_cluster.py saw: three sweeps against a two-node cluster, and every process id."""
    if not _namespace_can_be_made():
        pytest.skip("needs a network namespace (unshare -n, as root) to keep Ray's traffic on loopback")
    root = tmp_path_factory.mktemp("ray")
    script = f"ip link set lo up && exec {sys.executable} {DRIVER} {root}"
    result = subprocess.run(
        ["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_small_grid_runs_on_the_cluster_as_it_does_here(cluster):
    agree = cluster["agree"]
    assert agree["returncodes"] == [0, 0], agree["stderr"]
    on_ray = {row["run"]: row for row in agree["ray"]}
    local = {row["run"]: row for row in agree["local"]}
    assert on_ray.keys() == local.keys()
    assert len(agree["ray"]) == len(on_ray) == 2
    assert {row["stack_size"] for row in agree["ray"]} == {"2"}  # one stack, on the cluster
    for name, row in on_ray.items():
        assert row["status"] == local[name]["status"] == "ok"
        tolerance = max(2 * float(local[name]["test/acc_gap_se"]), 0.003)  # the stacked study's tolerance
        assert abs(float(row["test/acc"]) - float(local[name]["test/acc"])) <= tolerance


def test_a_stopped_sweep_resubmits_only_what_did_not_finish(cluster):
    resume = cluster["resume"]
    assert resume["stopped"] == 130, resume["stopped_err"]
    assert "binclf-sweep: stopped by Ctrl-C" in resume["stopped_out"]
    assert resume["finished_before"] == ["scale=0.3,seed=0"]
    assert resume["again"] == 0
    assert "2 runs, 1 already finished, 1 to run" in resume["again_out"]
    assert resume["unchanged"]  # the finished run was not redone
    assert [row["status"] for row in resume["rows"]] == ["ok"] * 2


def test_sigterm_stops_a_sweep_on_ray_as_it_stops_a_local_one(cluster):
    term = cluster["term"]
    assert term["returncode"] == 143, term["stderr"]
    assert "binclf-sweep: stopped by SIGTERM" in term["stdout"]
    assert "Traceback" not in term["stderr"]
    assert "*** SIG" not in term["stderr"]  # no crash dump from Ray's signal handlers
    assert len(term["rows"]) == 2  # results.csv written, every run in it
    assert {row["status"] for row in term["rows"]} <= {"ok", "missing"}


def test_a_lost_node_costs_no_run(cluster):
    lost = cluster["lost"]
    assert lost["returncode"] == 0, lost["stderr"]
    assert len(lost["killed"]) > 1  # the task's worker and the node's own processes
    names = [row["run"] for row in lost["rows"]]
    assert len(names) == len(set(names)) == 2  # none missing, none twice
    assert {row["status"] for row in lost["rows"]} == {"ok"}


def test_no_ray_process_is_left(cluster):
    assert cluster["pids"]
    for pid in set(cluster["pids"]):
        cmdline = Path(f"/proc/{pid}/cmdline")
        assert not (cmdline.exists() and b"ray" in cmdline.read_bytes()), pid


def _sweep(tmp_path, *extra: str) -> str:
    args = [
        f"--base_config={DEFAULT_CONFIG}",
        '--grid={"data.scale": [0.5]}',
        "--steps=10",
        f"--root={tmp_path}",
    ]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--executor=ray", *extra])
    return str(exit_.value.code)


def test_an_unreachable_cluster_is_one_line(tmp_path):
    with socket.socket() as probe:  # a port on loopback that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    message = _sweep(tmp_path, f"--ray_address=127.0.0.1:{port}")
    assert message.startswith(f"binclf-sweep: error: cannot reach the Ray cluster at 127.0.0.1:{port}")


@pytest.mark.parametrize(
    "reply", [b"", b"HTTP/1.1 400 Bad Request\r\n\r\n"], ids=["silent", "another protocol"]
)
def test_an_address_where_something_else_listens_is_one_line(tmp_path, reply):
    """A listener on loopback that is not Ray: it accepts the connection and then says nothing, or answers in
    another protocol. Ray itself would wait on it for a minute or more; the sweep names it at once."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def answer() -> None:
            connection, _ = server.accept()
            with connection, contextlib.suppress(OSError):  # the sweep may reset the connection
                connection.recv(64)
                connection.sendall(reply)
                connection.recv(64)  # hold the connection until the sweep gives up on it

        listener = threading.Thread(target=answer, daemon=True)
        listener.start()
        message = _sweep(tmp_path, f"--ray_address=127.0.0.1:{port}")
    assert message == (
        f"binclf-sweep: error: something other than a Ray cluster answers at 127.0.0.1:{port}: give the head "
        "node's address (`ray start --head` prints it)"
    )
    listener.join()


def test_ray_that_cannot_start_here_is_one_line(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")

    def cannot_start(**settings):  # as ray.init fails where its processes cannot start
        raise RuntimeError("Failed to start the GCS server.\nLog files are in /tmp/ray/session_latest/logs")

    monkeypatch.setattr(ray, "init", cannot_start)
    message = _sweep(tmp_path)
    assert (
        message == "binclf-sweep: error: could not start Ray on this machine: Failed to start the GCS server."
    )


def test_without_ray_installed_the_sweep_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as where it is not installed
    assert _sweep(tmp_path) == "binclf-sweep: error: --executor ray needs Ray: pip install 'binclf[ray]'"
