"""A plain LightningDataModule, with DataLoaders and an ``input_dim``, works with every command; binclf says
once, in one line, what it misses for not holding its splits in memory."""

from __future__ import annotations

import csv
import sys

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from binclf.cli import run_command


class PlainLoaders(LightningDataModule):
    """Two features, labelled by their sum, served by DataLoaders over TensorDatasets."""

    def __init__(self, num_samples: int = 600, batch_size: int = 50) -> None:
        super().__init__()
        self.num_samples, self.batch_size = num_samples, batch_size
        self.input_dim = 2  # the CLI links it to the network's input_dim

    def setup(self, stage: str) -> None:
        features = torch.randn(self.num_samples, 2, generator=torch.Generator().manual_seed(0))
        targets = (features.sum(dim=1, keepdim=True) > 0).float()
        split = [self.num_samples * 2 // 3, self.num_samples * 5 // 6]
        self.splits = {
            "train": TensorDataset(features[: split[0]], targets[: split[0]]),
            "val": TensorDataset(features[split[0] : split[1]], targets[split[0] : split[1]]),
            "test": TensorDataset(features[split[1] :], targets[split[1] :]),
            "predict": TensorDataset(features[split[1] :]),
        }

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["predict"], batch_size=self.batch_size)


def test_a_plain_datamodule_fits_tests_and_predicts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])
    common = [f"--data={__name__}.PlainLoaders", "--data.num_samples=600", "--data.batch_size=50"]
    common += ["--trainer.enable_progress_bar=false"]
    run_command(["fit", *common, "--trainer.max_epochs=5", "--model.optimizer.lr=0.5"])
    fit_err = capsys.readouterr().err
    test = run_command(["test", *common])
    test_out = capsys.readouterr().out
    run_command(["predict", *common])
    capsys.readouterr()

    warnings = [line for line in fit_err.splitlines() if "does not hold its splits in memory" in line]
    assert warnings == [
        "binclf: PlainLoaders does not hold its splits in memory (binclf.data.contract.InMemoryData): no "
        "figures of its data, no oracle metrics, and predictions identified by their position only"
    ]
    metrics = test.trainer.callback_metrics
    assert metrics["test/acc"] > 0.9
    assert not [key for key in metrics if "llr" in key or "bayes" in key]
    assert "Test summary" in test_out
    run = tmp_path / "lightning_logs" / "version_0"
    assert {path.name for path in run.glob("*.png")} == {"training_loss.png"}
    with (run / "predictions.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [int(row["index"]) for row in rows] == list(range(100))
    assert all(0 <= float(row["probability"]) <= 1 for row in rows)
