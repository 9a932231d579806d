"""The worked example for "Use your own data": a small table of e-mails, spam or ham, made up from a fixed
seed. ``python -m binclf.data.examples [folder]`` writes ``emails.csv`` (labelled) and ``new_emails.csv``
(features only) into ``folder`` (default ``configs/examples``)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

FEATURES = ["links", "exclamations", "caps_fraction", "length_kchars"]


def _emails(rng: np.random.Generator, count: int, spam: bool) -> list[list[float]]:
    # Spam has more links and exclamation marks, more capitals, and is shorter; the classes overlap.
    links = rng.poisson(3.0 if spam else 1.0, count)
    exclamations = rng.poisson(2.5 if spam else 0.6, count)
    caps = rng.beta(5, 15, count) if spam else rng.beta(2, 28, count)
    length = rng.lognormal(np.log(0.9 if spam else 1.6), 0.6, count)
    return [
        [int(a), int(b), round(float(c), 3), round(float(d), 2)]
        for a, b, c, d in zip(links, exclamations, caps, length, strict=True)
    ]


def write_examples(folder: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labelled = [(row, "ham") for row in _emails(rng, 360, spam=False)] + [
        (row, "spam") for row in _emails(rng, 240, spam=True)
    ]
    order = rng.permutation(len(labelled))
    with (folder / "emails.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["email_id", *FEATURES, "label"])
        for number, i in enumerate(order):
            row, label = labelled[i]
            writer.writerow([f"m{number:04d}", *row, label])
    unlabelled = _emails(rng, 10, spam=False) + _emails(rng, 10, spam=True)
    with (folder / "new_emails.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["email_id", *FEATURES])
        for number, i in enumerate(rng.permutation(len(unlabelled))):
            writer.writerow([f"n{number:04d}", *unlabelled[i]])


if __name__ == "__main__":
    write_examples(Path(sys.argv[1] if len(sys.argv) > 1 else "configs/examples"))
