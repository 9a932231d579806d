"""What the hostile-input suite (``tests/test_hostile.py``, and the sweep's in ``tests/study``) shares:
Hypothesis's profiles, the values it draws from, the outcome of one command, what every outcome must be,
and a tree of files a command must leave as it found them.

Two profiles: ``ci`` (the default) tries a fixed set of examples, chosen the same way on every run, so
``make test`` is deterministic and bounded, and fails on the first problem. ``fuzz`` (``BINCLF_FUZZ`` set to
a file, as ``make fuzz`` does) tries many more, chosen afresh, writes every problem it meets to that file,
and goes on; ``python tests/hostile.py FILE`` then lists the distinct ones.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import os
import re
import resource
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

FINDINGS = os.environ.get("BINCLF_FUZZ")
_COMMON = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None}
settings.register_profile("ci", derandomize=True, print_blob=False, **_COMMON)
settings.register_profile("fuzz", max_examples=300, phases=[Phase.generate], **_COMMON)
settings.load_profile("fuzz" if FINDINGS else "ci")

# Examples per family in `make test`.
EXAMPLES = {"checkpoints": 100, "configs": 100, "tables": 60, "sweeps": 100}


def examples(family: str) -> settings:
    return settings() if FINDINGS else settings(max_examples=EXAMPLES[family])


# Values that no setting or file field should take without a word: extremes, wrong types, code.
NUMBERS = st.sampled_from(
    [
        0,
        -1,
        1,
        3,
        2**31,
        2**63,
        -(2**63),
        1e308,
        -1e308,
        1e-45,
        1e-300,
        float("nan"),
        float("inf"),
        -float("inf"),
    ]
)
STRINGS = st.one_of(
    st.sampled_from(
        [
            "",
            "..",
            "../../outside/notes.txt",
            "/etc/passwd",
            "planted.Net",
            "builtins.print",
            "os.system",
            "subprocess.Popen",
            '{"class_path": "planted.Net"}',
            "class_path: planted.Net",
            "!!python/object/apply:os.system ['true']",
            '=HYPERLINK("http://x")',
            "x" * 20_000,
            "é€😀\u202e",
            "binclf.data.TwoGaussianDataModule",
            "binclf.monitoring.tensorboard.RunLogger",
            "lightning.pytorch.callbacks.ModelCheckpoint",
            "binclf.monitoring.figures.DiagnosticFigures",
            "torch.nn.Linear",
        ]
    ),
    st.text(max_size=12),
)


# The longest error line a person should be asked to read.
LONGEST_LINE = 1_000
# How much more memory a command may take than the process held before it.
MEMORY_BOUND_BYTES = 2 * 10**9


@dataclass
class Outcome:
    """How a command ended: its exit status (0: success), what it printed, and the exception that escaped it,
    if one did (a traceback)."""

    status: int | str | None
    out: str
    err: str
    escaped: BaseException | None = None

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if re.match(r"binclf(-\w+)?: error:", line)]


def working_in(folder: Path) -> contextlib.AbstractContextManager[None]:
    return contextlib.chdir(folder)


def command(run: Callable[[], object]) -> Outcome:
    """Run a command's entry point in this process, as its console script would, and how it ended."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run()
            status, escaped = 0, None
        except SystemExit as exit_:
            status, escaped = exit_.code, None
        except BaseException as error:  # a traceback: what the suite is looking for
            status, escaped = None, error
            traceback.print_exc(file=err)
    if isinstance(status, str):  # sys.exit("message"): the message went to stderr, the status is 1
        err.write(status + "\n")
        status = 1
    return Outcome(status, out.getvalue(), err.getvalue(), escaped)


def problems(outcome: Outcome) -> list[str]:
    """What is wrong with how a command ended: it must succeed, or end with one line that names the problem
    and a non-zero status; never with a traceback."""
    if outcome.escaped is not None or "Traceback" in outcome.err:
        where = traceback.extract_tb(outcome.escaped.__traceback__)[-1] if outcome.escaped else None
        at = f" at {Path(where.filename).name}:{where.name}" if where else ""
        kind = type(outcome.escaped).__name__ if outcome.escaped else "printed"
        return [f"traceback: {kind}{at}: {_first_line(outcome)}"]
    if outcome.status == 0:
        return []
    lines = outcome.error_lines
    if len(lines) != 1:
        usage = "the parser's usage, " if "usage:" in outcome.err else ""
        last = (outcome.err.strip().splitlines() or [""])[-1][:100]
        return [f"{usage}{len(lines)} error lines, status {outcome.status}: {last}"]
    if len(lines[0]) > LONGEST_LINE:
        return [f"an error line of {len(lines[0]):,} characters: {lines[0][:120]}..."]
    return []


def _first_line(outcome: Outcome) -> str:
    return (str(outcome.escaped).strip().splitlines() or [""])[0][:160] if outcome.escaped else ""


def verdict(family: str, example: str, found: list[str]) -> None:
    """Fail on the problems found (``ci``), or write them down and go on (``fuzz``)."""
    if not found:
        return
    if FINDINGS is None:
        raise AssertionError(f"{family}: {'; '.join(found)}\nexample: {example}")
    with open(FINDINGS, "a") as file:
        for problem in found:
            file.write(json.dumps({"family": family, "problem": problem, "example": example[:2000]}) + "\n")


class Sentinels:
    """Files around and inside a command's working folder that the command has no business touching: their
    names and contents are compared before and after. Make the command's inputs before these."""

    def __init__(self, root: Path, own: tuple[str, ...]) -> None:
        self.root, self.own = root, own  # own: the folders under root the command may write into
        for place in ("outside/notes.txt", "outside/deep/data.csv", "work/keep.txt", "work/results.csv"):
            path = root / place
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{place}: not yours\n")
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, str]:
        found = {}
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root).as_posix()
            if any(relative == own or relative.startswith(f"{own}/") for own in self.own):
                continue
            found[relative] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        return found

    def changed(self) -> list[str]:
        after = self.snapshot()
        changes = sorted(n for n in self.before.keys() | after.keys() if self.before.get(n) != after.get(n))
        # The folders on the way to a command's own: made for it, holding nothing else.
        changes = [
            n
            for n in changes
            if not (after.get(n) == "folder" and any(o.startswith(f"{n}/") for o in self.own))
        ]
        return [f"changed outside its own folders: {', '.join(changes[:5])}"] if changes else []


def peak_memory() -> int:
    """The most memory this process has held, in bytes (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def distinct(findings: Path) -> list[tuple[str, str, int, str]]:
    """The distinct problems a fuzz run wrote down: family, problem (paths and numbers blurred), count, and
    the first example."""
    counts: collections.Counter = collections.Counter()
    first: dict[tuple[str, str], str] = {}
    for line in findings.read_text().splitlines():
        finding = json.loads(line)
        key = (finding["family"], re.sub(r"(/tmp/\S+|\d+(\.\d+)?(e[-+]?\d+)?)", "…", finding["problem"]))
        counts[key] += 1
        first.setdefault(key, finding["example"])
    return [(family, problem, count, first[(family, problem)]) for (family, problem), count in counts.items()]


if __name__ == "__main__":
    found = distinct(Path(sys.argv[1])) if Path(sys.argv[1]).is_file() else []
    print(f"{len(found)} distinct problems")
    for family, problem, count, example in sorted(found):
        print(f"- [{family}] {problem}  ({count}x)\n    e.g. {example[:300]}")
