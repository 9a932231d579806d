"""Runs inside a network namespace that holds nothing but loopback (``tests/study/test_ray.py`` starts it): a
two-node Ray cluster on this machine, and ``binclf-sweep --executor ray`` against it, three ways:

1. ``agree``: a small grid through the cluster (as one stack) and through the local executor;
2. ``resume``: the sweep stopped with SIGINT while runs are held at a known point, then run again; and
   ``term``: the same stopped with SIGTERM;
3. ``lost node``: the second node's processes killed while they run a task, the sweep finishing anyway.

Prints one JSON line with what the test checks: the results, the console output, and the process ids of
everything started, to check that none is left running.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ray.cluster_utils import Cluster

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parents[1] / "configs" / "default.yaml"
SWEEP = str(Path(sys.executable).parent / "binclf-sweep")
GRID = '{"data.scale": [0.3, 1.0]}'  # two runs: one per node, or one finished and one held
SMALL = "--data.num_val_samples=200, --data.num_test_samples=1000, --data.batch_size=64"
os.environ["PYTHONPATH"] = str(HERE.parent)  # tests/faults.py, for the sweeps and for the nodes' Ray workers
ENV = dict(os.environ)


def sweep(root: Path, name: str, *extra: str, address: str | None = None) -> list[str]:
    command = [SWEEP, f"--base_config={CONFIG}", f"--grid={GRID}", "--seeds=[0]", "--steps=20"]
    command += [f"--root={root}", f"--name={name}", *extra]
    return command + (["--executor=ray", f"--ray_address={address}"] if address else [])


def hold(folder: Path, except_run: str | None = None) -> str:
    init = {"folder": str(folder)} | ({"except_run": except_run} if except_run else {})
    spec = json.dumps({"class_path": "faults.HoldAtTrainStart", "init_args": init})
    return f"--args=[{SMALL}, '--trainer.callbacks+={spec}']"


def rows(root: Path, name: str) -> list[dict[str, str]]:
    """The sweep's results.csv, or no rows where it wrote none (which the tests then report)."""
    if not (root / name / "results.csv").is_file():
        return []
    with (root / name / "results.csv").open() as file:
        return list(csv.DictReader(file))


def wait_for(condition, driver: subprocess.Popen) -> None:
    """Until ``condition`` holds: it looks at files the runs write, a known point, not a clock. A driver that
    has ended can no longer bring it about."""
    while not condition():
        if driver.poll() is not None:
            raise SystemExit(
                f"the sweep ended first:\n{driver.stdout.read()[-2000:]}{driver.stderr.read()[-2000:]}"
            )
        time.sleep(0.05)


def main() -> None:
    root = Path(sys.argv[1])
    report: dict = {"pids": []}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    second = cluster.add_node(num_cpus=1)
    for node in (cluster.head_node, second):
        report["pids"] += [process.pid for _, process in node.live_processes()]
    address = cluster.address
    try:
        # 1. The same grid through the cluster and through the local executor: one stack of both runs on
        # Ray (one worker), two runs side by side here.
        on_ray = subprocess.run(
            sweep(root, "on-ray", f"--args=[{SMALL}]", "--workers=1", address=address),
            env=ENV,
            capture_output=True,
            text=True,
            check=False,
        )
        local = subprocess.run(
            sweep(root, "local", f"--args=[{SMALL}]", "--workers=2"),
            env=ENV,
            capture_output=True,
            text=True,
            check=False,
        )
        report["agree"] = {
            "returncodes": [on_ray.returncode, local.returncode],
            "ray": rows(root, "on-ray"),
            "local": rows(root, "local"),
            "stderr": on_ray.stderr[-2000:],
        }

        # 2. Stopped while runs are held, then run again: only what did not finish goes out again.
        held = root / "held"
        held.mkdir()
        first = "scale=0.3,seed=0"
        command = sweep(root, "resume", "--mode=solo", hold(held, except_run=first), address=address)
        driver = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: (root / "resume" / "runs" / first / "result.json").exists(), driver)
        wait_for(lambda: any(path.name.split("@")[1] != first for path in held.glob("started@*")), driver)
        driver.send_signal(signal.SIGINT)
        stopped_out, stopped_err = driver.communicate(timeout=300)
        finished = sorted(path.parent.name for path in (root / "resume" / "runs").glob("*/result.json"))
        mtimes = {
            name: (root / "resume" / "runs" / name / "result.json").stat().st_mtime_ns for name in finished
        }
        report["pids"] += [int(path.name.split("@")[2]) for path in held.glob("started@*")]
        (held / "go").touch()
        again = subprocess.run(command, env=ENV, capture_output=True, text=True, check=False)
        report["resume"] = {
            "stopped": driver.returncode,
            "stopped_out": stopped_out[-2000:],
            "stopped_err": stopped_err[-2000:],
            "finished_before": finished,
            "again": again.returncode,
            "again_out": again.stdout[-3000:],
            "rows": rows(root, "resume"),
            "unchanged": all(
                (root / "resume" / "runs" / n / "result.json").stat().st_mtime_ns == t
                for n, t in mtimes.items()
            ),
        }

        # 2b. The same, stopped with SIGTERM, as a batch system stops a job.
        held = root / "held-term"
        held.mkdir()
        command = sweep(root, "term", "--mode=solo", hold(held), address=address)
        driver = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: any(held.glob("started@*")), driver)
        driver.send_signal(signal.SIGTERM)
        term_out, term_err = driver.communicate(timeout=300)
        report["pids"] += [int(path.name.split("@")[2]) for path in held.glob("started@*")]
        (held / "go").touch()
        report["term"] = {
            "returncode": driver.returncode,
            "stdout": term_out[-2000:],
            "stderr": term_err[-4000:],
            "rows": rows(root, "term"),
        }

        # 3. The second node lost while it runs a task: its processes killed by their ids.
        lost = root / "lost"
        lost.mkdir()
        command = sweep(root, "lost-node", "--mode=solo", "--ray_retries=3", hold(lost), address=address)
        driver = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        on_second = lambda: [p for p in lost.glob("started@*") if p.name.endswith(second.node_id)]  # noqa: E731
        wait_for(lambda: on_second(), driver)
        victims = [int(on_second()[0].name.split("@")[2])] + [
            process.pid for _, process in second.live_processes()
        ]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        (lost / "go").touch()
        out, err = driver.communicate(timeout=600)
        report["pids"] += [int(path.name.split("@")[2]) for path in lost.glob("started@*")]
        report["lost"] = {
            "returncode": driver.returncode,
            "killed": victims,
            "rows": rows(root, "lost-node"),
            "stdout": out[-2000:],
            "stderr": err[-2000:],
        }
    finally:
        cluster.shutdown()
        for pid in set(report["pids"]):  # until each is gone; one that never goes makes the test time out
            while ray_process(pid):
                time.sleep(0.05)
    print(json.dumps(report))


def ray_process(pid: int) -> bool:
    """Whether ``pid`` is still one of Ray's processes (and not another that has taken its number)."""
    try:
        return b"ray" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


if __name__ == "__main__":
    main()
