"""``binclf-sweep --executor ray``: the study's stacks and solo runs as Ray tasks on a cluster.

Ray core is all it takes: one task per stack or solo run (``ray.remote`` with the CPUs or GPUs it uses, so
that Ray packs tasks onto nodes), ``ray.wait`` for results as they come, and Ray's own retries for a task
whose node is lost. What is done stays binclf's to decide: every run writes its ``result.json`` into the
sweep folder, so the same command run again submits only what did not finish. That folder must be on
storage that every node sees; the sweep checks, before it submits anything, that each node can.

Ray is an optional extra (``pip install 'binclf[ray]'``); nothing here imports it until it is used.
"""

from __future__ import annotations

import os
import signal
import socket
import uuid
from pathlib import Path
from typing import Any


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'binclf[ray]'") from None
    return ray


# What an HTTP/2 client sends first; a gRPC server, as Ray's head is, answers with a SETTINGS frame.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS_FRAME = 4


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """A ``host:port`` where nothing answers, or where something other than a Ray head does (it does not
    speak gRPC), is named within seconds, not after Ray's own long wait."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray_address must be host:port, or auto; got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as connection:
            connection.sendall(_HTTP2_PREFACE)
            reply = connection.recv(9)
    except TimeoutError:
        reply = b""
    except OSError as error:
        raise ValueError(
            f"cannot reach the Ray cluster at {address} ({error.strerror or error}): start it with "
            "`ray start --head`, or give the head node's address"
        ) from None
    if len(reply) < 9 or reply[3] != _SETTINGS_FRAME:
        raise ValueError(
            f"something other than a Ray cluster answers at {address}: give the head node's address "
            "(`ray start --head` prints it)"
        )


def _in_task(task: list[Any], threads: int) -> list[dict[str, Any]]:
    """A task on a Ray worker: one stack or one solo run, with as many torch threads as CPUs it asked for."""
    import torch

    from binclf.main import prepare_process
    from binclf.study.execute import run_task

    prepare_process()  # as the binclf command sets its process up: each run is such a command
    torch.set_num_threads(max(1, threads))
    return run_task(task)


def _storage_problem(token: str) -> str | None:
    """On one node: whether it sees the driver's token in the sweep folder and can write beside it."""
    path = Path(token)
    if not path.is_file():
        return f"does not see {path.parent}"
    try:
        probe = path.with_name(f"{path.name}.{os.getpid()}")
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        return f"cannot write in {path.parent} ({error.strerror or error})"
    return None


def check_shared_storage(ray: Any, sweep_dir: Path) -> None:
    """Every live node must see the sweep folder and write in it; else one clear line, before any run."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = sweep_dir.resolve() / f".storage-check-{uuid.uuid4().hex}"
    token.write_text("")
    try:
        probe = ray.remote(num_cpus=0)(_storage_problem)
        nodes = [node for node in ray.nodes() if node["Alive"]]
        refs = [
            probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(str(token))
            for node in nodes
        ]
        for node, problem in zip(nodes, ray.get(refs), strict=True):
            if problem is not None:
                raise ValueError(
                    f"the Ray node at {node['NodeManagerAddress']} {problem}: the sweep folder must be on "
                    "storage that every node shares (--root)"
                )
    finally:
        token.unlink(missing_ok=True)


def run_on_ray(
    runs: list[Any],
    *,
    mode: str,
    workers: int,
    progress: Any,
    address: str | None,
    cpus: float,
    gpus: float,
    retries: int,
) -> None:
    """Run ``runs`` (stacked or solo) as Ray tasks, passing each task's results to ``progress.record`` as it
    ends, and, every so often, the stacks that have begun to ``progress.tick``: each writes its steps into
    its first run's folder, on the storage every node shares with the sweep.

    ``address`` is the cluster (``host:port``, or ``auto`` inside a Ray job); ``None`` starts Ray on this
    machine. Each task asks for ``cpus`` CPUs and ``gpus`` GPUs; with ``workers`` 0, the runs are spread
    over as many stacks as the cluster fits such tasks. A task lost with its node is tried again up to
    ``retries`` times. Stopped (Ctrl-C, SIGTERM), every task still pending is cancelled.
    """
    from binclf.study.execute import PROGRESS, lost, read_progress
    from binclf.study.plan import tasks

    ray = _import_ray()
    if address not in (None, "auto"):
        _check_reachable(address)
    stop = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address, log_to_driver=False, include_dashboard=False if address is None else None)
    except ConnectionError as error:
        raise ValueError(f"cannot connect to the Ray cluster at {address}: {error}") from None
    except Exception as error:  # Ray could not start its processes here: no room, no permission, ...
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        where = f"connect to the Ray cluster at {address}" if address else "start Ray on this machine"
        raise ValueError(f"could not {where}: {reason}") from None
    finally:
        # ray.init makes SIGTERM exit the driver at once (sys.exit(15)); the sweep's own handler stops it as a
        # local sweep stops: tasks cancelled, results.csv written, exit status 143.
        signal.signal(signal.SIGTERM, stop)
    try:
        check_shared_storage(ray, runs[0].directory.parent.parent)
        if not workers:
            fits = ray.cluster_resources().get("GPU" if gpus else "CPU", 1) // (gpus or cpus or 1)
            workers = max(1, int(fits))
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=retries)(_in_task)
        work = tasks(runs, workers, mode)
        for task in work:  # an unfinished earlier attempt's steps are not this one's
            (task[0].directory / PROGRESS).unlink(missing_ok=True)
        pending = {remote.remote(task, int(cpus)): task for task in work}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=progress.seconds_to_next())
                for done in ready:
                    task = pending.pop(done)
                    try:
                        progress.record(ray.get(done))
                    except ray.exceptions.RayError as error:  # lost beyond its retries
                        progress.record(lost(task, error))
                # Ray does not say which of its tasks run: a stack that has written its steps has begun.
                begun = [task for task in pending.values() if read_progress(task[0].directory / PROGRESS)]
                progress.tick(begun, submitted=len(pending) - len(begun))
        except BaseException:  # stopped: no task may go on without the sweep that submitted it
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        ray.shutdown()
