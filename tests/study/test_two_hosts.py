"""``binclf-sweep --executor ray`` on a real cluster: docs/study.md's multi-host recipe, with Ray's token
authentication, on two hosts made of two network namespaces (``tests/study/two_hosts.py``). Skipped, with
the reason, where namespaces cannot be made. (How the sweep drives Ray, against a stand-in for it, is in
test_ray_executor.py; a cluster that cannot be reached, in test_ray.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("two_hosts.py")

pytestmark = pytest.mark.slow  # two Ray nodes and seven sweeps


def _namespaces_can_be_made() -> str | None:
    """Why two hosts cannot be made here, or ``None``."""
    name = "binclf-probe"
    try:
        made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    except OSError as error:
        return f"no ip command ({error.strerror})"
    if made.returncode != 0:
        return f"ip netns is not permitted here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    return None


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory) -> dict:
    problem = _namespaces_can_be_made()
    if problem is not None:
        pytest.skip(f"needs two network namespaces joined by a veth pair: {problem}")
    root = tmp_path_factory.mktemp("two-hosts")
    result = subprocess.run(
        [sys.executable, str(DRIVER), str(root)], capture_output=True, text=True, timeout=1200, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_recipe_needs_its_token(two_hosts):
    assert two_hosts["token_file"]  # ray get-auth-token --generate wrote ~/.ray/auth_token
    refused = two_hosts["refused"]
    assert refused["returncode"] != 0
    error_lines = [line for line in refused["stderr"].splitlines() if line.startswith("binclf-sweep: error:")]
    assert len(error_lines) == 1, refused["stderr"]
    assert "Traceback" not in refused["stderr"]


def test_a_small_grid_runs_on_the_cluster_as_one_stack_as_it_does_here(two_hosts):
    agree = two_hosts["agree"]
    assert agree["returncodes"] == [0, 0], agree["stderr"]
    on_ray = {row["run"]: row for row in agree["ray"]}
    local = {row["run"]: row for row in agree["local"]}
    assert len(on_ray) == len(agree["ray"]) == 2
    assert on_ray.keys() == local.keys()
    for name, row in on_ray.items():
        assert row["status"] == local[name]["status"] == "ok"
        assert row["stack_size"] == local[name]["stack_size"] == "2"  # one stack, on the cluster as here
        for key in ("test/acc", "test/loss", "test/llr_rmse"):
            assert float(row[key]) == pytest.approx(float(local[name][key]), rel=1e-4, abs=1e-4), (name, key)


def test_every_run_crosses_to_the_second_host(two_hosts):
    # The head offers no CPUs: each held run started in the second host's network namespace.
    assert two_hosts["hosts_of_runs"] == ["second"]


def test_a_stopped_sweep_resubmits_only_what_did_not_finish(two_hosts):
    resume = two_hosts["resume"]
    assert resume["stopped"] == 130, resume["stopped_err"]
    assert "binclf-sweep: stopped by Ctrl-C" in resume["stopped_out"]
    assert resume["finished_before"] == ["scale=0.3,seed=0"]
    assert resume["again"] == 0
    assert "2 runs, 1 already finished, 1 to run" in resume["again_out"]
    assert resume["unchanged"]  # the finished run was not redone
    assert [row["status"] for row in resume["rows"]] == ["ok"] * 2


def test_sigterm_stops_a_sweep_on_ray_as_it_stops_a_local_one(two_hosts):
    term = two_hosts["term"]
    assert term["returncode"] == 143, term["stderr"]
    assert "binclf-sweep: stopped by SIGTERM" in term["stdout"]
    assert "Traceback" not in term["stderr"]
    assert "*** SIG" not in term["stderr"]  # no crash dump from Ray's signal handlers
    assert len(term["rows"]) == 2  # results.csv written, every run in it
    assert {row["status"] for row in term["rows"]} <= {"ok", "missing"}


def test_a_lost_second_host_costs_no_run(two_hosts):
    lost = two_hosts["lost"]
    assert lost["returncode"] == 0, lost["stderr"]
    assert lost["killed"] > 0
    assert [row["status"] for row in lost["rows"]] == ["ok"], lost["rows"]  # the one run, not lost
    assert lost["starts"] == [lost["held_run"]] * 2  # started again on the new node


def test_nothing_is_left_behind(two_hosts):
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    assert not [name for name in two_hosts["namespaces"] if name in listed]
    assert two_hosts["pids"]
    assert not [pid for pid in two_hosts["pids"] if Path(f"/proc/{pid}").exists() and _is_ray(pid)]


def _is_ray(pid: int) -> bool:
    try:
        return b"ray" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
