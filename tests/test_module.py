import pytest
import torch
from torch import nn

from binclf.data import TwoGaussianDataModule
from binclf.module import BinaryClassifier
from binclf.networks import MLP


def test_loss_decreases_over_a_few_steps():
    torch.manual_seed(0)
    datamodule = TwoGaussianDataModule(num_samples=512, batch_size=128)
    datamodule.setup("fit")
    model = BinaryClassifier(MLP(), optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    optimizer = model.configure_optimizers()
    batch = datamodule.train_set

    def loss() -> float:
        return model.model_step(batch)[0].item()

    before = loss()
    for _ in range(30):
        optimizer.zero_grad()
        model.model_step(batch)[0].backward()
        optimizer.step()
    assert loss() < 0.9 * before


def test_default_optimizer_is_the_articles_sgd():
    optimizer = BinaryClassifier(MLP()).configure_optimizers()
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults["lr"] == 0.01
    assert optimizer.defaults["momentum"] == 0


def test_lr_scheduler_is_injected():
    model = BinaryClassifier(
        MLP(), lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    )
    config = model.configure_optimizers()
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)


def test_predict_step_returns_probabilities_of_the_logits():
    model = BinaryClassifier(MLP())
    features = torch.linspace(-3, 3, 50).unsqueeze(1)
    output = model.predict_step((features, torch.arange(50)), 0)
    assert torch.equal(output["logit"], model(features))
    assert torch.allclose(output["probability"], torch.sigmoid(output["logit"]))
    assert ((output["probability"] >= 0) & (output["probability"] <= 1)).all()


def test_objects_passed_from_python_stay_out_of_hyperparameters():
    # A live module or a lambda in hparams would make checkpoints unpicklable or unsafe to load.
    model = BinaryClassifier(MLP(), optimizer=lambda params: torch.optim.Adam(params))
    assert not any(isinstance(v, nn.Module) or callable(v) for v in model.hparams.values())


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), -float("inf")])
def test_a_loss_that_is_not_finite_is_divergence_and_a_finite_one_is_not(loss):
    model = BinaryClassifier(MLP())
    why = model.divergence("training", torch.tensor(loss), epoch=3, step=70)
    assert why == (
        f"the training loss became {loss} at epoch 3, step 70: training diverged; lower the learning rate"
    )
    assert model.divergence("validation", torch.tensor(1e30), epoch=3) is None
