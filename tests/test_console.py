"""What the console shows: the progress bar's pacing."""

from __future__ import annotations

import re

import pytest
from lightning.pytorch import Trainer

from binclf.data import TwoGaussianDataModule
from binclf.module import BinaryClassifier
from binclf.monitoring.console import TimedProgressBar
from binclf.networks import MLP


def bar_counts(capsys: pytest.CaptureFixture[str], min_interval: float, tmp_path) -> set[tuple[str, str]]:
    """The ``(epoch, n/total)`` pairs that the training bar drew over a 2-epoch fit of 8 batches each."""
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
    return set(re.findall(r"Epoch (\d+/2): +\d+%\|[^|]*\| (\d+/\d+)", capsys.readouterr().out))


def test_one_bar_for_the_whole_fit_redrawn_no_more_often_than_its_interval_but_always_at_epoch_ends(
    capsys, tmp_path
):
    # One bar over all 16 steps of the fit, so that its time remaining is the fit's, not the epoch's.
    every = {("1/2", f"{n}/16") for n in range(1, 9)} | {("2/2", f"{n}/16") for n in range(9, 17)}
    assert bar_counts(capsys, 0.0, tmp_path) >= every  # no limit: every batch
    # A limit longer than the run: the start, the first batch and each epoch's last batch.
    assert bar_counts(capsys, 3600.0, tmp_path) == {
        ("1/2", "0/16"),
        ("1/2", "1/16"),
        ("1/2", "8/16"),
        ("2/2", "8/16"),
        ("2/2", "16/16"),
    }
