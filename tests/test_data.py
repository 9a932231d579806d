import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from binclf.data import TwoGaussianDataModule
from binclf.data.batches import EpochBatchSampler, InMemoryBatches
from binclf.data.gaussians import logistic_llr_floor
from binclf.llr import INFORMATIVE_LLR


def make(stage: str = "fit", **kwargs) -> TwoGaussianDataModule:
    settings = {"num_samples": 500, "num_val_samples": 300, "num_test_samples": 400, "batch_size": 64}
    datamodule = TwoGaussianDataModule(**{**settings, **kwargs})
    datamodule.setup(stage)
    return datamodule


def test_shapes_dtypes_and_balanced_labels():
    datamodule = make()
    features, targets = datamodule.train_set
    assert features.shape == (1000, 1)
    assert targets.shape == (1000, 1)
    assert features.dtype == targets.dtype == torch.float32
    assert set(targets.unique().tolist()) == {0.0, 1.0}
    assert targets.sum().item() == 500
    assert datamodule.val_set.features.shape == (600, 1)


def test_each_class_has_the_configured_mean_and_scale():
    datamodule = make(num_samples=50_000, mean_a=-1.0, mean_b=3.0, scale=0.5)
    features, targets = datamodule.train_set
    for label, mean in [(0.0, -1.0), (1.0, 3.0)]:
        group = features[targets == label]
        assert group.mean().item() == pytest.approx(mean, abs=0.02)
        assert group.std().item() == pytest.approx(0.5, rel=0.02)


def test_splits_are_distinct_draws():
    datamodule = make()
    datamodule.setup("test")
    train, val, test = (
        set(s.features.flatten().tolist())
        for s in (datamodule.train_set, datamodule.val_set, datamodule.test_set)
    )
    assert not train & val
    assert not train & test
    assert not val & test


def test_same_seed_same_data_and_other_seed_other_data():
    first, second, other = make(seed=3), make(seed=3), make(seed=4)
    assert torch.equal(first.train_set.features, second.train_set.features)
    assert not torch.equal(first.train_set.features, other.train_set.features)


def test_test_set_does_not_depend_on_training_size():
    small, large = make("test", num_samples=10), make("test", num_samples=5000)
    assert torch.equal(small.test_set.features, large.test_set.features)


def epoch_batches(loader: InMemoryBatches, epoch: int) -> list[torch.Tensor]:
    loader.order.set_epoch(epoch)
    return [features for features, _ in loader]


def test_shuffle_differs_between_epochs_and_repeats_for_the_same_epoch():
    loader = make().train_dataloader()
    epoch0, epoch1, epoch0_again = (torch.cat(epoch_batches(loader, e)) for e in (0, 1, 0))
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(epoch0, epoch0_again)
    # Both epochs are permutations of the same samples.
    assert torch.equal(epoch0.sort(dim=0).values, epoch1.sort(dim=0).values)


def test_shuffle_mixes_the_classes_within_batches():
    loader = make().train_dataloader()
    loader.order.set_epoch(0)
    _, targets = next(iter(loader))
    assert 0 < targets.mean().item() < 1


def test_training_batches_have_the_configured_size():
    loader = make().train_dataloader()
    sizes = [len(features) for features, _ in loader]
    assert sizes == [64] * 15 + [1000 - 15 * 64]
    assert len(loader) == len(sizes)


def test_evaluation_uses_its_own_batch_size():
    datamodule = make(eval_batch_size=100)
    assert [len(features) for features, _ in datamodule.val_dataloader()] == [100] * 6


def test_evaluation_keeps_stored_order():
    datamodule = make()
    features = torch.cat([features for features, _ in datamodule.val_dataloader()])
    assert torch.equal(features, datamodule.val_set.features)


@pytest.mark.parametrize("world_size", [2, 3])
def test_training_shards_are_disjoint_and_cover_every_sample(world_size):
    num_samples = 1000
    shards = []
    for rank in range(world_size):
        sampler = EpochBatchSampler(num_samples, 64, shuffle=True, seed=7, rank=rank, world_size=world_size)
        sampler.set_epoch(2)
        shards.append(sampler.shard())
    # Every rank takes as many steps, or DDP would hang waiting for the shorter one.
    assert len({len(shard) for shard in shards}) == 1
    everything = torch.cat(shards)
    assert set(everything.tolist()) == set(range(num_samples))
    assert len(everything) - num_samples == (-num_samples) % world_size  # only the padding repeats


@pytest.mark.parametrize(("num_samples", "world_size"), [(513, 2), (1000, 3), (257, 2)])
def test_evaluation_shards_split_exactly_into_equal_batch_counts(num_samples, world_size):
    indices, batch_counts = [], set()
    for rank in range(world_size):
        loader = InMemoryBatches(
            torch.arange(num_samples),
            order=EpochBatchSampler(num_samples, 256, shuffle=False, rank=rank, world_size=world_size),
        )
        batches = [batch for (batch,) in loader]
        assert all(len(batch) > 0 for batch in batches)
        batch_counts.add(len(batches))
        indices += torch.cat(batches).tolist()
    assert len(batch_counts) == 1
    assert sorted(indices) == list(range(num_samples))  # each sample exactly once: no bias in metrics


def test_predict_set_is_a_grid_across_both_classes():
    datamodule = make("predict", num_predict_points=11)
    features, index = next(iter(datamodule.predict_dataloader()))
    assert torch.allclose(features.flatten(), torch.linspace(0.0, 3.0, 11))
    assert index.tolist() == list(range(11))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("num_samples", 0),
        ("num_val_samples", -5),
        ("num_test_samples", 0),
        ("num_predict_points", 0),
        ("batch_size", 0),
        ("scale", 0.0),
        ("scale", -0.2),
        ("scale", float("inf")),
        ("mean_a", float("nan")),
        ("mean_b", float("inf")),
        ("seed", -1),
    ],
)
def test_invalid_parameters_name_themselves(name, value):
    with pytest.raises(ValueError, match=name):
        TwoGaussianDataModule(**{name: value})


def test_vector_means_and_scale_pair_in_3d():
    datamodule = make(dim=3, mean_a=[0.0, 1.0, 2.0], mean_b=5.0, scale=[0.5, 1.5])
    assert datamodule.input_dim == 3
    assert datamodule.train_set.features.shape == (1000, 3)
    assert datamodule.bayes_accuracy_analytic is None
    np.testing.assert_array_equal(datamodule.gaussians.mean_b, [5.0, 5.0, 5.0])


def test_the_oracle_is_the_article_closed_form_on_the_default_settings():
    datamodule = TwoGaussianDataModule()
    x = torch.tensor([[1.0], [1.5], [2.0]])
    assert torch.allclose(datamodule.log_likelihood_ratio(x), torch.tensor([[-12.5], [0.0], [12.5]]))
    assert datamodule.bayes_accuracy_analytic == pytest.approx(0.99379, abs=5e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 2, "mean_a": [1.0, 2.0, 3.0]}, "mean_a must be one number or a list of dim=2"),
        ({"mean_b": [float("nan")]}, "mean_b must lie within"),
        ({"scale": [0.1, 0.2, 0.3]}, "scale must be one number or a pair"),
        ({"scale": [0.1, -0.2]}, "scale must lie between"),
        ({"dim": 0}, "dim must be at least 1"),
    ],
)
def test_invalid_gaussian_settings_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TwoGaussianDataModule(**kwargs)


def test_every_batch_is_gathered_on_the_device_its_split_was_moved_to():
    # On a GPU each split moves to the device once, when its loader is built, and batches are gathered
    # there: no step copies data from the host. The meta device (shapes, no data) stands in for a GPU.
    device = torch.device("meta")
    datamodule = TwoGaussianDataModule(num_samples=256, num_val_samples=64, batch_size=64)
    datamodule.setup("fit")
    datamodule.trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=device), global_rank=0, world_size=1, current_epoch=0
    )
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()):
        batches = list(loader)
        assert len(batches) == len(loader)
        assert all(tensor.device == device for batch in batches for tensor in batch)


def test_standardize_shows_the_network_centred_unit_features_and_keeps_the_oracle_on_x(binclf):
    """The network sees (x − 1.5) / 0.539; the Bayes rule, the llr and the predictions file stay in x."""
    datamodule = make(num_samples=50_000, standardize=True)
    seen = datamodule.train_dataloader().tensors[0]
    assert seen.mean().item() == pytest.approx(0, abs=0.01)
    assert seen.std().item() == pytest.approx(1, abs=0.01)

    binclf("fit", "--data.standardize=true")
    test = binclf("test", "--data.standardize=true")
    features, targets = test.datamodule.test_set
    bayes = ((features > 1.5).float() == targets).float().mean()
    assert test.trainer.callback_metrics["test/bayes_acc"] == pytest.approx(bayes.item(), abs=1e-6)
    assert test.trainer.callback_metrics["test/acc"] > 0.98

    predict = binclf("predict", "--data.standardize=true")
    with open(Path(predict.trainer.log_dir) / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    x = torch.tensor([float(row["x"]) for row in rows])
    assert torch.allclose(x, predict.datamodule.predict_features[:, 0])  # as drawn, not as the network saw
    boundary = x[torch.tensor([float(row["logit"]) for row in rows]) > 0].min()
    assert boundary.item() == pytest.approx(1.5, abs=0.05)


def test_every_standardisation_but_the_identity_is_applied():
    """Only centre 0 with spread 1 leaves the features as drawn: a centre of exactly 0 with another spread
    still scales them."""
    datamodule = make()
    features = torch.tensor([[3.0], [-1.0]])
    for centre, spread in [(0.0, 2.0), (1.0, 1.0), (0.5, 4.0), (0.0, 1.0)]:
        state = {"input_centre": [centre], "input_spread": [spread], "trained_num_samples": 1000}
        datamodule.load_state_dict(state)
        assert torch.equal(datamodule.transform(features), (features - centre) / spread), (centre, spread)


def test_a_checkpoint_brings_its_standardisation_and_training_size_to_test(binclf):
    """Tested with a config that says neither, a network trained on standardised inputs is still shown
    standardised inputs, and its llr floor is that of the size it was trained on."""
    trained = ["--data.scale=0.5", "--data.standardize=true", "--data.num_samples=2000"]
    fit = binclf("fit", *trained)
    test = binclf("test", "--data.scale=0.5")
    datamodule = test.datamodule
    assert datamodule.input_centre == fit.datamodule.input_centre == [1.5]
    assert datamodule.input_spread == fit.datamodule.input_spread
    assert datamodule.input_spread[0] == pytest.approx(np.sqrt(0.5**2 + 0.5**2))
    assert datamodule.trained_num_samples == 2000
    floor = logistic_llr_floor(separation=2.0, dim=1, num_per_class=2000, band=INFORMATIVE_LLR)
    metrics = test.trainer.callback_metrics
    assert float(metrics["test/llr_floor"]) == pytest.approx(floor, rel=1e-6)
    # Shown raw x, this network would put its boundary far from 1.5 and lose many points.
    assert metrics["test/acc"] > metrics["test/bayes_acc"] - 0.02
