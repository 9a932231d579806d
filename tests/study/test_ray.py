"""``binclf-sweep --executor ray`` where no cluster answers: unreachable, something else listening, Ray unable
to start, Ray not installed. Each is one line. (A real cluster is in test_two_hosts.py.)"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading

import pytest
from helpers import DEFAULT_CONFIG

from binclf.study.sweep import main


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
