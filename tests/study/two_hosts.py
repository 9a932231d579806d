"""The multi-host recipe of docs/study.md, run on two hosts made on this machine: two network namespaces
joined by a veth pair, with addresses from 198.18.0.0/15 (set aside for network tests) that exist only
inside them. ``tests/study/test_two_hosts.py`` runs this as root and reads the one JSON line it prints.

- The token: ``ray get-auth-token --generate`` writes ``~/.ray/auth_token``; every process here has the same
  home folder, which is what copying the file to every node and the driver gives, and ``RAY_AUTH_MODE=token``.
  A driver without the token is refused.
- The head (``ray start --head``) offers no CPUs, so every run crosses to the second host; each held run
  records the network namespace it ran in.
- ``agree``: ``binclf-sweep --executor ray`` runs a small grid as one stack on the cluster; the same grid
  runs as one stack on the local executor, to compare.
- ``resume``: the sweep stopped with SIGINT while a run is held at a known point, then run again; ``term``:
  the same stopped with SIGTERM, as a batch system stops a job.
- ``lost``: the second host lost (its processes killed) while it holds a run, and a node started there
  again: the run is retried, and no run is lost.

Everything started is removed at the end, processes and namespaces alike, however the script ends.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parents[1] / "configs" / "default.yaml"
BIN = Path(sys.executable).parent
GRID = '{"data.scale": [0.3, 1.0]}'  # two runs: one stack, or one finished and one held
SMALL = "--data.num_val_samples=200, --data.num_test_samples=1000, --data.batch_size=64"
HEAD_IP, NODE_IP, PORT = "198.18.0.1", "198.18.0.2", 6379


def run(*command: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=check, **kwargs)


class Hosts:
    """Two namespaces, ``head`` and ``node``, joined by a veth pair; removed with every process in them."""

    def __init__(self) -> None:
        tag = os.getpid()
        self.head, self.node = f"binclf-head-{tag}", f"binclf-node-{tag}"
        self.pids: set[int] = set()

    def __enter__(self) -> Hosts:
        run("ip", "netns", "add", self.head)
        run("ip", "netns", "add", self.node)
        veth_head, veth_node = f"bch{os.getpid() % 100000}", f"bcn{os.getpid() % 100000}"
        run(
            "ip",
            "link",
            "add",
            veth_head,
            "netns",
            self.head,
            "type",
            "veth",
            "peer",
            veth_node,
            "netns",
            self.node,
        )
        for name, veth, address in ((self.head, veth_head, HEAD_IP), (self.node, veth_node, NODE_IP)):
            run("ip", "-n", name, "addr", "add", f"{address}/30", "dev", veth)
            run("ip", "-n", name, "link", "set", veth, "up")
            run("ip", "-n", name, "link", "set", "lo", "up")
        return self

    def exec(self, host: str, *command: str) -> list[str]:
        return ["ip", "netns", "exec", host, *command]

    def processes(self, host: str) -> set[int]:
        listed = run("ip", "netns", "pids", host, check=False).stdout.split()
        return {int(pid) for pid in listed}

    def kill_all(self, host: str) -> set[int]:
        """SIGKILL every process in ``host`` until none is left; returns their ids."""
        killed: set[int] = set()
        while pids := self.processes(host):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed |= pids
            time.sleep(0.05)
        return killed

    def __exit__(self, *_: object) -> None:
        for host in (self.head, self.node):
            self.pids |= self.kill_all(host)
            run("ip", "netns", "del", host, check=False)  # the veth pair goes with its namespaces


def rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open() as file:
        return list(csv.DictReader(file))


def sweep(root: Path, name: str, *extra: str, grid: str = GRID) -> list[str]:
    command = [str(BIN / "binclf-sweep"), f"--base_config={CONFIG}", f"--grid={grid}", "--seeds=[0]"]
    return [*command, "--steps=20", f"--root={root}", f"--name={name}", *extra]


def held(folder: Path, except_run: str | None = None) -> str:
    init = {"folder": str(folder)} | ({"except_run": except_run} if except_run else {})
    spec = json.dumps({"class_path": "faults.HoldAtTrainStart", "init_args": init})
    return f"--args=[{SMALL}, '--trainer.callbacks+={spec}']"


def wait_for(condition, driver: subprocess.Popen) -> None:
    """Until ``condition`` holds: it looks at files the runs write, a known point, not a clock. A driver that
    has ended can no longer bring it about."""
    while not condition():
        if driver.poll() is not None:
            raise SystemExit(
                f"the sweep ended first:\n{driver.stdout.read()[-2000:]}{driver.stderr.read()[-2000:]}"
            )
        time.sleep(0.05)


def starts(folder: Path) -> list[tuple[str, int]]:
    """The runs held in ``folder`` as they started: each run's name and its network namespace's number."""
    return [(path.name.split("@")[1], int(path.read_text() or 0)) for path in folder.glob("started@*")]


def main() -> None:
    # Stopped (pytest's timeout, Ctrl-C), it still removes what it started: the hosts' ``with`` ends.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(sys.argv[1])
    home = root / "home"  # the driver's and both nodes' home: ~/.ray/auth_token is the one token
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(HERE.parent),  # tests/faults.py, for the runs' callbacks on the nodes
    }
    ray = str(BIN / "ray")
    address = f"{HEAD_IP}:{PORT}"
    report: dict = {}
    start = time.perf_counter()
    with Hosts() as hosts:
        run(ray, "get-auth-token", "--generate", env=env)
        report["token_file"] = (home / ".ray" / "auth_token").is_file()
        head = [ray, "start", "--head", f"--node-ip-address={HEAD_IP}", f"--port={PORT}", "--num-cpus=0"]
        # The head declares a node dead after three missed health checks half a second apart (Ray's default:
        # five, three seconds apart), so the lost host's run is retried as soon as the host is gone.
        health_checks = {
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }
        run(*hosts.exec(hosts.head, *head, "--include-dashboard=false"), env=env | health_checks)
        node = [ray, "start", f"--address={address}", f"--node-ip-address={NODE_IP}", "--num-cpus=1"]
        run(*hosts.exec(hosts.node, *node), env=env)
        on_ray = ["--executor=ray", f"--ray_address={address}"]

        def driver(name: str, *extra: str, grid: str = GRID) -> list[str]:
            """A sweep started on the head host, submitting to the cluster."""
            return [*hosts.exec(hosts.head, *sweep(root, name, *extra, grid=grid)), *on_ray]

        # Without the token, the cluster refuses the driver.
        stranger = {**env, "HOME": str(root)}
        refused = run(*driver("refused", f"--args=[{SMALL}]"), env=stranger, check=False, timeout=300)
        report["refused"] = {"returncode": refused.returncode, "stderr": refused.stderr[-2000:]}

        # 1. The same grid as one stack (one worker) on the cluster and, meanwhile, on the local executor.
        local = subprocess.Popen(
            sweep(root, "local", f"--args=[{SMALL}]", "--workers=1"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        stacked = run(
            *driver("on-ray", f"--args=[{SMALL}]", "--workers=1"), env=env, check=False, timeout=600
        )
        _, local_err = local.communicate(timeout=600)
        report["agree"] = {
            "returncodes": [stacked.returncode, local.returncode],
            "stderr": stacked.stderr[-3000:] + local_err[-3000:],
            "ray": rows(root / "on-ray" / "results.csv"),
            "local": rows(root / "local" / "results.csv"),
        }

        # 2. Stopped with SIGINT while a run is held, then run again: only what did not finish goes out again.
        held_here = root / "held"
        held_here.mkdir()
        first = "scale=0.3,seed=0"
        command = driver("resume", "--mode=solo", held(held_here, except_run=first))
        sweep_process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        runs = root / "resume" / "runs"
        wait_for(lambda: (runs / first / "result.json").exists(), sweep_process)
        wait_for(lambda: any(name != first for name, _ in starts(held_here)), sweep_process)
        sweep_process.send_signal(signal.SIGINT)
        stopped_out, stopped_err = sweep_process.communicate(timeout=300)
        finished = sorted(path.parent.name for path in runs.glob("*/result.json"))
        mtimes = {name: (runs / name / "result.json").stat().st_mtime_ns for name in finished}
        (held_here / "go").touch()
        again = run(*command, env=env, check=False, timeout=600)
        report["resume"] = {
            "stopped": sweep_process.returncode,
            "stopped_out": stopped_out[-2000:],
            "stopped_err": stopped_err[-2000:],
            "finished_before": finished,
            "again": again.returncode,
            "again_out": again.stdout[-3000:],
            "rows": rows(root / "resume" / "results.csv"),
            "unchanged": all((runs / n / "result.json").stat().st_mtime_ns == t for n, t in mtimes.items()),
        }

        # 3. The same, stopped with SIGTERM.
        held_term = root / "held-term"
        held_term.mkdir()
        sweep_process = subprocess.Popen(
            driver("term", "--mode=solo", held(held_term)),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: starts(held_term), sweep_process)
        sweep_process.send_signal(signal.SIGTERM)
        term_out, term_err = sweep_process.communicate(timeout=300)
        (held_term / "go").touch()
        report["term"] = {
            "returncode": sweep_process.returncode,
            "stdout": term_out[-2000:],
            "stderr": term_err[-4000:],
            "rows": rows(root / "term" / "results.csv"),
        }

        # 4. The second host lost while it holds the one run; a node started there again takes its retry.
        lost = root / "lost"
        lost.mkdir()
        command = driver("lost-node", "--ray_retries=3", held(lost), grid='{"data.scale": [0.3]}')
        sweep_process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        wait_for(lambda: starts(lost), sweep_process)  # a run held on the second host
        first_held = starts(lost)[0][0]
        killed = hosts.kill_all(hosts.node)
        hosts.pids |= killed
        run(*hosts.exec(hosts.node, *node), env=env)
        (lost / "go").touch()
        out, err = sweep_process.communicate(timeout=600)
        report["lost"] = {
            "returncode": sweep_process.returncode,
            "held_run": first_held,
            "killed": len(killed),
            "rows": rows(root / "lost-node" / "results.csv"),
            "stdout": out[-3000:],
            "stderr": err[-3000:],
            "starts": sorted(name for name, _ in starts(lost)),
        }

        # Where every held run ran: the second host's namespace, or another.
        node_namespace = os.stat(f"/run/netns/{hosts.node}").st_ino
        held_runs = [each for folder in (held_here, held_term, lost) for each in starts(folder)]
        report["hosts_of_runs"] = sorted(
            {"second" if ns == node_namespace else "other" for _, ns in held_runs}
        )
        report["namespaces"] = [hosts.head, hosts.node]
    report["pids"] = sorted(hosts.pids)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
