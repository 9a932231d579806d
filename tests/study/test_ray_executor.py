"""How the sweep drives Ray, decided in a second against a stand-in for Ray: each task asks for its retries,
and every run's result is recorded exactly once, whether its task ended well or was lost. (The real
cluster is in test_two_hosts.py.)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from binclf.study import ray_executor
from binclf.study.plan import Run, tasks


class RayError(Exception):
    pass


class StandInRay:
    """What run_on_ray uses of Ray: tasks finish one at a time, in order; ``lose`` names runs whose task is
    lost beyond its retries."""

    class exceptions:  # named as the attribute Ray has
        pass

    def __init__(self, lose: set[str]) -> None:
        self.exceptions.RayError = RayError
        self.lose, self.options, self.tasks, self.shut_down, self.waits = lose, {}, {}, False, 0

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

    def wait(self, refs, num_returns, timeout):
        self.waits += 1
        if self.waits == 1:  # the first wait ends with nothing done, as when a progress line is due
            return [], refs
        return refs[:1], refs[1:]

    def get(self, ref):
        task = self.tasks[ref]
        if any(run.name in self.lose for run in task):
            raise RayError("the node died")
        return [{"run": run.name, "status": "ok", "error": ""} for run in task]

    def cancel(self, ref, force) -> None:
        pass


class Recorded:
    """What the sweep's Progress is told: results as tasks end, and the stacks begun at each tick."""

    def __init__(self) -> None:
        self.results: list[dict] = []
        self.ticks: list[tuple[list[str], int]] = []

    def record(self, results: list[dict]) -> None:
        self.results.extend(results)

    def seconds_to_next(self) -> float:
        return 0.0

    def tick(self, running, submitted: int = 0) -> None:
        self.ticks.append(([task[0].name for task in running], submitted))


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
    progress = Recorded()
    recorded = progress.results
    planned = runs(tmp_path)
    ray_executor.run_on_ray(
        planned, mode=mode, workers=2, progress=progress, address=None, cpus=1.0, gpus=0.0, retries=5
    )
    assert ray.options["max_retries"] == 5
    assert Counter(result["run"] for result in recorded) == Counter(run.name for run in planned)
    lost = {result["run"] for result in recorded if result["status"] == "failed"}
    # The lost task's runs fail, with what Ray said; a stack loses all of its runs, a solo task only its own.
    assert "scale=1.0,seed=2" in lost
    assert all("the node died" in result["error"] for result in recorded if result["status"] == "failed")
    assert len(lost) == (1 if mode == "solo" else 3)
    assert ray.shut_down


def test_a_stack_on_the_cluster_shows_its_steps_once_it_writes_them(tmp_path, monkeypatch):
    """Ray does not say which tasks run: the progress line shows each stack that has written its steps into
    its first run's folder, and counts the other tasks; a file left by an earlier attempt is not shown."""
    ray = StandInRay(lose=set())
    monkeypatch.setattr(ray_executor, "_import_ray", lambda: ray)
    monkeypatch.setattr(ray_executor, "check_shared_storage", lambda ray, folder: None)
    planned = runs(tmp_path)
    first, second = tasks(planned, 2, "stacked")  # two stacks of three, as run_on_ray plans them
    stale = first[0].directory / "progress"
    stale.parent.mkdir(parents=True)
    stale.write_text("5 10\n")  # an earlier attempt's
    begun = second[0].directory / "progress"

    original_wait = ray.wait

    def wait(refs, num_returns, timeout):
        if ray.waits == 0:  # by the first wait, the stack of the second cell has begun
            begun.parent.mkdir(parents=True, exist_ok=True)
            begun.write_text("40 100\n")
        return original_wait(refs, num_returns, timeout)

    monkeypatch.setattr(ray, "wait", wait)
    progress = Recorded()
    ray_executor.run_on_ray(
        planned, mode="stacked", workers=2, progress=progress, address=None, cpus=1.0, gpus=0.0, retries=1
    )
    assert not stale.exists()
    assert progress.ticks[0] == ([second[0].name], 1)  # one stack begun, one submitted
