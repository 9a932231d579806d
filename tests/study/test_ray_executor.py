"""How the sweep drives Ray, decided in a second against a stand-in for Ray: each task asks for its retries,
and every run's result is recorded exactly once, whether its task ended well or was lost. (The real
cluster is in test_two_hosts.py.)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from binclf.study import ray_executor
from binclf.study.plan import Run


class RayError(Exception):
    pass


class StandInRay:
    """What run_on_ray uses of Ray: tasks finish one at a time, in order; ``lose`` names runs whose task is
    lost beyond its retries."""

    class exceptions:  # named as the attribute Ray has
        pass

    def __init__(self, lose: set[str]) -> None:
        self.exceptions.RayError = RayError
        self.lose, self.options, self.tasks, self.shut_down = lose, {}, {}, False

    def init(self, **kwargs) -> None:
        pass

    def shutdown(self) -> None:
        self.shut_down = True

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0}

    def remote(self, **options):
        self.options = options

        def wrap(function):
            ray = self

            class Remote:
                def remote(self, task, threads):
                    ref = len(ray.tasks)
                    ray.tasks[ref] = task
                    return ref

            return Remote()

        return wrap

    def wait(self, refs, num_returns):
        return refs[:1], refs[1:]

    def get(self, ref):
        task = self.tasks[ref]
        if any(run.name in self.lose for run in task):
            raise RayError("the node died")
        return [{"run": run.name, "status": "ok", "error": ""} for run in task]

    def cancel(self, ref, force) -> None:
        pass


def runs(tmp_path: Path) -> list[Run]:
    return [
        Run(
            f"scale={scale},seed={seed}",
            {"data.scale": scale},
            seed,
            tmp_path / "runs" / f"{scale}-{seed}",
            [],
        )
        for scale in (0.5, 1.0)
        for seed in (0, 1, 2)
    ]


@pytest.mark.parametrize("mode", ["stacked", "solo"])
def test_each_task_asks_for_its_retries_and_every_run_is_recorded_once(tmp_path, monkeypatch, mode):
    ray = StandInRay(lose={"scale=1.0,seed=2"})
    monkeypatch.setattr(ray_executor, "_import_ray", lambda: ray)
    monkeypatch.setattr(ray_executor, "check_shared_storage", lambda ray, folder: None)
    recorded = []
    planned = runs(tmp_path)
    ray_executor.run_on_ray(
        planned, mode=mode, workers=2, record=recorded.extend, address=None, cpus=1.0, gpus=0.0, retries=5
    )
    assert ray.options["max_retries"] == 5
    assert Counter(result["run"] for result in recorded) == Counter(run.name for run in planned)
    lost = {result["run"] for result in recorded if result["status"] == "failed"}
    # The lost task's runs fail, with what Ray said; a stack loses all of its runs, a solo task only its own.
    assert "scale=1.0,seed=2" in lost
    assert all("the node died" in result["error"] for result in recorded if result["status"] == "failed")
    assert len(lost) == (1 if mode == "solo" else 3)
    assert ray.shut_down
