"""A data module with no oracle (real data) still trains, tests and draws what it can."""

import torch
from lightning.pytorch import Trainer

from binclf.data import InMemoryDataModule, LabelledData
from binclf.module import BinaryClassifier
from binclf.monitoring.figures import DiagnosticFigures
from binclf.networks import MLP


class PlainData(InMemoryDataModule):
    """Two features, labels from their sum: no densities known, so no oracle (``has_oracle`` is False)."""

    def __init__(self) -> None:
        super().__init__(batch_size=50, eval_batch_size=50, seed=0)
        generator = torch.Generator().manual_seed(0)
        features = torch.randn(1200, 2, generator=generator)
        targets = (features.sum(dim=1, keepdim=True) > 0).float()
        self.train_set = LabelledData(features[:800], targets[:800])
        self.val_set = LabelledData(features[800:1000], targets[800:1000])
        self.test_set = LabelledData(features[1000:], targets[1000:])

    @property
    def input_dim(self) -> int:
        return 2


def test_training_and_testing_without_an_oracle(tmp_path):
    torch.manual_seed(0)
    model = BinaryClassifier(MLP(input_dim=2), optimizer=lambda params: torch.optim.SGD(params, lr=0.5))
    trainer = Trainer(
        max_epochs=5,
        default_root_dir=tmp_path,
        callbacks=[DiagnosticFigures()],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=5,
    )
    datamodule = PlainData()
    trainer.fit(model, datamodule=datamodule)
    (metrics,) = trainer.test(model, datamodule=datamodule, verbose=False)
    assert metrics["test/acc"] > 0.9
    assert {"test/loss", "test/auroc", "test/ece", "test/brier"} <= set(metrics)
    assert not {key for key in metrics if "bayes" in key or "llr" in key or "gap" in key}
    run = tmp_path / "lightning_logs" / "version_0"
    drawn = {path.stem for path in run.glob("*.png")}
    fitted, tested = (
        {"training_loss", "data_histogram", "roc", "reliability"},
        {"data_histogram", "roc", "reliability"},
    )
    assert drawn == fitted | {f"test_{name}" for name in tested}
