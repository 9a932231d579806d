"""What the console shows: the progress bar's pacing."""

from __future__ import annotations

import re

import pytest
from lightning.pytorch import Trainer

from binclf.data import TwoGaussianDataModule
from binclf.module import BinaryClassifier
from binclf.monitoring.console import TimedProgressBar
from binclf.networks import MLP


def bar_counts(capsys: pytest.CaptureFixture[str], min_interval: float, tmp_path) -> set[str]:
    """The ``n/total`` counts that the training bar drew over a 2-epoch fit of 8 batches each."""
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[TimedProgressBar(min_interval=min_interval)],
    )
    datamodule = TwoGaussianDataModule(num_samples=512, num_val_samples=64, batch_size=128)
    capsys.readouterr()
    trainer.fit(BinaryClassifier(MLP()), datamodule=datamodule)
    return set(re.findall(r"Epoch \d+: +\d+%\|[^|]*\| (\d+/8)", capsys.readouterr().out))


def test_progress_bar_redraws_no_more_often_than_its_interval_but_always_at_the_end(capsys, tmp_path):
    assert bar_counts(capsys, 0.0, tmp_path) >= {f"{n}/8" for n in range(1, 9)}  # no limit: every batch
    # A limit longer than the run: each epoch's start and last batch, and the run's first batch.
    assert bar_counts(capsys, 3600.0, tmp_path) == {"0/8", "1/8", "8/8"}
