"""The study is a wing of the template: delete it, and the template is whole and passes its tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Everything that is the study's and nothing else's.
STUDY = ["src/binclf/study", "tests/study", "configs/sweeps", "benchmarks/stacked_study.py"]
ENTRY_POINT = 'binclf-sweep = "binclf.study.sweep:main"\n'


def repository_files() -> list[str]:
    """What a clone holds, with this working tree's changes: tracked files, and new ones git would track."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]


def collected(directory: Path, environment: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args]
    return subprocess.run(
        command, cwd=directory, env=environment, capture_output=True, text=True, check=False
    )


# What runs in the copy: the tests that read the repository's own files, whose links and imports the deletion
# could break, and one fit, test and predict. Every other test is collected there: its imports and
# parameters resolve without the study.
RUN_IN_THE_COPY = [
    "tests/test_docs.py",
    "tests/test_layout.py",
    "tests/test_cli.py::test_fit_then_test_and_predict_use_the_best_checkpoint",
]


def count(output: str, word: str) -> int:
    """The number of tests pytest's summary line gives as ``word`` (collected, passed)."""
    return int(re.search(rf"(\d+) (?:tests? )?{word}", output)[1])


def selected(collect_only: str) -> list[str]:
    """The test ids, of those ``pytest --collect-only -q`` listed, that RUN_IN_THE_COPY selects."""
    ids = [line for line in collect_only.splitlines() if line.startswith("tests/")]
    return [i for i in ids if any(i.startswith(f"{s}::") or i.split("[")[0] == s for s in RUN_IN_THE_COPY)]


@pytest.mark.slow
def test_the_template_collects_its_tests_and_trains_with_the_study_deleted(tmp_path):
    template = tmp_path / "template"
    for name in repository_files():
        target = template / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    for part in STUDY:
        path = template / part
        assert path.exists(), f"{part} is gone from the repository: update STUDY"
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    pyproject = template / "pyproject.toml"
    assert ENTRY_POINT in pyproject.read_text()
    pyproject.write_text(pyproject.read_text().replace(ENTRY_POINT, ""))

    # Nothing left uses the study: no import of it, no command, config or benchmark of it.
    uses = re.compile(
        r"^\s*((from|import) binclf\.study|from binclf import study)"
        r"|binclf-sweep|configs/sweeps|stacked_study",
        re.MULTILINE,
    )
    left = [
        str(path.relative_to(template))
        for path in [*template.joinpath("src").rglob("*.py"), *template.joinpath("tests").rglob("*.py")]
        if uses.search(path.read_text())
    ]
    assert left == []

    # The copy's own source, not this checkout's (installed in development mode): PYTHONPATH comes first.
    environment = {**os.environ, "PYTHONPATH": str(template / "src")}
    here = collected(ROOT, {**os.environ}, "--collect-only", "--ignore=tests/study")
    there = collected(template, environment, "--collect-only")
    assert there.returncode == 0, there.stdout[-3000:] + there.stderr[-3000:]
    assert count(there.stdout, "collected") == count(here.stdout, "collected") > 400
    result = collected(template, environment, *RUN_IN_THE_COPY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert count(result.stdout, "passed") == len(selected(here.stdout))
    imported_from = subprocess.run(
        [sys.executable, "-c", "import binclf; print(binclf.__file__)"],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported_from.stdout.strip() == str(template / "src" / "binclf" / "__init__.py")
