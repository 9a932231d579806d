"""The multi-host recipe of docs/study.md, run on two hosts made on this machine: two network namespaces
joined by a veth pair, with addresses from 198.18.0.0/15 (set aside for network tests) that exist only
inside them. ``tests/study/test_two_hosts.py`` runs this as root and reads the one JSON line it prints.

- The token: ``ray get-auth-token --generate`` writes ``~/.ray/auth_token``; every process here has the same
  home folder, which is what copying the file to every node and the driver gives, and ``RAY_AUTH_MODE=token``.
- The head (``ray start --head``) offers no CPUs, so every run crosses to the second host.
- ``binclf-sweep --executor ray`` runs a small grid on the head host; the same grid runs on the local
  executor, to compare. A driver without the token is refused.
- The second host is lost (its processes killed) while it holds a run, and a node is started there again:
  the run is retried, and no run is lost.

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
GRID = '{"data.scale": [0.3, 1.0]}'  # two runs: one per node, or one finished and one held
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


def sweep(root: Path, name: str, *extra: str) -> list[str]:
    command = [str(BIN / "binclf-sweep"), f"--base_config={CONFIG}", f"--grid={GRID}", "--seeds=[0]"]
    return [*command, "--steps=20", f"--root={root}", f"--name={name}", *extra]


def held(folder: Path) -> str:
    spec = json.dumps({"class_path": "faults.HoldAtTrainStart", "init_args": {"folder": str(folder)}})
    return f"--args=[{SMALL}, '--trainer.callbacks+={spec}']"


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
        run(*hosts.exec(hosts.head, *head, "--include-dashboard=false"), env=env)
        node = [ray, "start", f"--address={address}", f"--node-ip-address={NODE_IP}", "--num-cpus=1"]
        run(*hosts.exec(hosts.node, *node), env=env)

        # Without the token, the cluster refuses the driver.
        stranger = {**env, "HOME": str(root)}
        refused = run(
            *hosts.exec(hosts.head, *sweep(root, "refused", f"--args=[{SMALL}]")),
            "--executor=ray",
            f"--ray_address={address}",
            env=stranger,
            check=False,
            timeout=300,
        )
        report["refused"] = {"returncode": refused.returncode, "stderr": refused.stderr[-2000:]}

        # The same grid on the two hosts and on the local executor; each run records the host it ran on.
        marks = root / "marks"
        marks.mkdir()
        (marks / "go").touch()  # recorded, never held
        on_ray = run(
            *hosts.exec(hosts.head, *sweep(root, "on-ray", held(marks))),
            "--executor=ray",
            f"--ray_address={address}",
            env=env,
            check=False,
            timeout=600,
        )
        local = run(
            *sweep(root, "local", f"--args=[{SMALL}]", "--workers=2"), env=env, check=False, timeout=600
        )
        node_namespace = os.stat(f"/run/netns/{hosts.node}").st_ino
        report["agree"] = {
            "returncodes": [on_ray.returncode, local.returncode],
            "stdout": on_ray.stdout[-3000:],
            "stderr": on_ray.stderr[-3000:],
            "ray": rows(root / "on-ray" / "results.csv"),
            "local": rows(root / "local" / "results.csv"),
            "on_second_host": sorted(
                path.name.split("@")[1]
                for path in marks.glob("started@*")
                if int(path.read_text() or 0) == node_namespace
            ),
        }

        # The second host lost while it holds a run; a node started there again takes the retried task.
        lost = root / "lost"
        lost.mkdir()
        command = hosts.exec(
            hosts.head, *sweep(root, "lost-node", "--mode=solo", "--ray_retries=3", held(lost))
        )
        command += ["--executor=ray", f"--ray_address={address}"]
        driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while not any(lost.glob("started@*")):  # a run held on the second host: a known point, not a clock
            if driver.poll() is not None:
                raise SystemExit(f"the sweep ended first: {driver.stderr.read()[-2000:]}")
            time.sleep(0.05)
        first = next(lost.glob("started@*")).name.split("@")[1]
        killed = hosts.kill_all(hosts.node)
        hosts.pids |= killed
        run(*hosts.exec(hosts.node, *node), env=env)
        (lost / "go").touch()
        out, err = driver.communicate(timeout=600)
        report["lost"] = {
            "returncode": driver.returncode,
            "held_run": first,
            "killed": len(killed),
            "rows": rows(root / "lost-node" / "results.csv"),
            "stdout": out[-3000:],
            "stderr": err[-3000:],
            "starts": sorted(path.name.split("@")[1] for path in lost.glob("started@*")),
        }
        report["namespaces"] = [hosts.head, hosts.node]
    report["pids"] = sorted(hosts.pids)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
