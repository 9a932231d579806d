"""Calibration of the logit: fitted on the validation split, stored in the checkpoint, applied by test and
predict, and reported beside the network's own figures."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
from helpers import DEFAULT_CONFIG, SMALL
from torchmetrics.classification import BinaryCalibrationError

from binclf.calibration import fit_calibration
from binclf.cli import run_command
from binclf.module import CALIBRATION_BINS


def labels_drawn_from(true_logits: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.sigmoid(true_logits), generator=generator)


def test_a_known_affine_distortion_of_the_logit_is_recovered():
    """Labels drawn from sigmoid(3·z − 0.5): the network's logit z is three times too timid and shifted."""
    logits = torch.linspace(-3, 3, 200_000)
    targets = labels_drawn_from(3 * logits - 0.5, seed=0)
    scale, shift = fit_calibration(logits, targets, "affine")
    assert scale == pytest.approx(3, rel=0.03)
    assert shift == pytest.approx(-0.5, abs=0.03)


def test_temperature_fits_the_scale_and_leaves_the_boundary_where_it_was():
    logits = torch.linspace(-3, 3, 200_000)
    targets = labels_drawn_from(3 * logits, seed=1)
    scale, shift = fit_calibration(logits, targets, "temperature")
    assert scale == pytest.approx(3, rel=0.03)
    assert shift == 0


def test_the_scale_stays_positive_so_no_decision_is_flipped():
    """A logit that points the wrong way would want a negative scale; that would flip every decision."""
    logits = torch.linspace(-3, 3, 10_000)
    targets = labels_drawn_from(-logits, seed=2)
    scale, _ = fit_calibration(logits, targets, "affine")
    assert 0 < scale < 0.01


def test_perfectly_separated_data_gives_a_finite_scale():
    """With hard 0/1 targets the best scale would be infinite; Platt's targets, 501/502 and 1/502 here,
    stop it where sigmoid(scale · logit) reaches them."""
    logits = torch.cat([torch.linspace(-3, -0.5, 500), torch.linspace(0.5, 3, 500)])
    scale, _ = fit_calibration(logits, (logits > 0).float(), "temperature")
    assert 1 < scale < 20


def test_platt_targets_follow_each_class_count_on_imbalanced_data():
    """90 points of class 1 at logit +1 and 10 of class 0 at −1: with two logit values, an affine fit reaches
    Platt's targets exactly, (90 + 1) / (90 + 2) for class 1 and 1 / (10 + 2) for class 0."""
    logits = torch.cat([torch.ones(90), -torch.ones(10)])
    targets = torch.cat([torch.ones(90), torch.zeros(10)])
    scale, shift = fit_calibration(logits, targets, "affine")
    assert torch.sigmoid(torch.tensor(scale + shift)).item() == pytest.approx(91 / 92, abs=1e-5)
    assert torch.sigmoid(torch.tensor(-scale + shift)).item() == pytest.approx(1 / 12, abs=1e-5)


def test_none_is_the_identity():
    assert fit_calibration(torch.randn(10), torch.ones(10), "none") == (1.0, 0.0)


def test_calibration_round_trips_through_a_checkpoint(binclf, tmp_path, capsys):
    """Fitted in ``fit``, stored as two plain tensors, and applied by ``test`` and ``predict`` in later
    commands that are not told about it: the model is rebuilt from the checkpoint."""
    fit = binclf("fit", "--model.calibration=affine")
    checkpoint_path = Path(fit.trainer.checkpoint_callback.best_model_path)
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    assert checkpoint["hyper_parameters"]["calibration"] == "affine"
    scale, shift = checkpoint["state_dict"]["logit_scale"], checkpoint["state_dict"]["logit_shift"]
    assert scale.item() != 1
    assert shift.item() != 0

    capsys.readouterr()
    test = binclf("test")
    out = capsys.readouterr().out
    assert test.model.calibration == "affine"
    assert torch.equal(test.model.logit_scale, scale)
    assert torch.equal(test.model.logit_shift, shift)
    metrics = test.trainer.callback_metrics
    for key in ("test/acc", "test/llr_rmse", "test/llr_slope", "test/ece"):
        assert f"{key}_raw" in metrics
    assert f"affine, fitted on the validation split: {scale.item():.4g} · logit {shift.item():+.4g}" in out
    assert f"(raw {100 * float(metrics['test/acc_raw']):.3f} %)" in out
    # test/ece is the calibrated probabilities' calibration error, test/ece_raw the network's own
    features, targets = test.datamodule.test_set
    with torch.no_grad():
        raw_test = test.model.network(test.datamodule.transform(features))
    for key, probabilities in [
        ("test/ece", torch.sigmoid(scale * raw_test + shift)),
        ("test/ece_raw", torch.sigmoid(raw_test)),
    ]:
        expected = BinaryCalibrationError(n_bins=CALIBRATION_BINS)(probabilities, targets)
        assert float(metrics[key]) == pytest.approx(float(expected), abs=1e-6), key
    assert float(metrics["test/ece"]) != pytest.approx(float(metrics["test/ece_raw"]), abs=1e-4)

    predict = binclf("predict")
    with open(Path(predict.trainer.log_dir) / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    raw = torch.tensor([float(row["raw_logit"]) for row in rows])
    logit = torch.tensor([float(row["logit"]) for row in rows])
    assert torch.allclose(logit, scale * raw + shift, atol=1e-5)
    # and the raw logit is the network's own, as the checkpoint's weights compute it
    model = predict.model
    features = predict.datamodule.transform(predict.datamodule.predict_features)
    assert torch.allclose(model.network(features).squeeze(1), raw, atol=1e-5)


def test_temperature_changes_no_decision_and_brings_the_logit_towards_the_llr(binclf):
    binclf("fit", "--model.calibration=temperature")
    metrics = binclf("test").trainer.callback_metrics
    assert metrics["test/acc"] == metrics["test/acc_raw"]
    assert metrics["test/llr_rmse"] < metrics["test/llr_rmse_raw"]


def test_without_calibration_nothing_raw_is_logged_and_the_logit_is_the_networks(binclf):
    fit = binclf("fit")
    assert fit.model.logit_scale.item() == 1
    assert fit.model.logit_shift.item() == 0
    metrics = binclf("test").trainer.callback_metrics
    assert not [key for key in metrics if key.endswith("_raw")]


def test_the_stored_calibration_is_a_fit_on_the_validation_splits_logits(binclf, tmp_path):
    """Not on the training batches', nor on any other split's: refitted on the validation logits of the
    checkpoint's own weights, the scale and shift come out the same."""
    fit = binclf("fit", "--model.calibration=affine")
    checkpoint = torch.load(
        tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True
    )
    state = checkpoint["state_dict"]
    network = fit.model.network
    network.load_state_dict(
        {name[len("network.") :]: t for name, t in state.items() if name.startswith("network.")}
    )
    validation = fit.datamodule.val_set
    with torch.no_grad():
        logits = network(fit.datamodule.transform(validation.features))
    scale, shift = fit_calibration(logits, validation.targets, "affine")
    assert state["logit_scale"].item() == pytest.approx(scale, rel=1e-5)
    assert state["logit_shift"].item() == pytest.approx(shift, rel=1e-5, abs=1e-6)
    # The same refit on the training split's logits gives other numbers: the check above can tell them apart.
    with torch.no_grad():
        train_logits = network(fit.datamodule.transform(fit.datamodule.train_set.features))
    train_scale, _ = fit_calibration(train_logits, fit.datamodule.train_set.targets, "affine")
    assert train_scale != pytest.approx(scale, rel=1e-5)


def test_a_calibration_that_was_never_fitted_is_not_called_fitted(fitted, tmp_path, monkeypatch, capsys):
    """A checkpoint saved before any validation of a calibrated run carries the identity: the summary must
    not say it was fitted on the validation split."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])
    checkpoint = torch.load(fitted, weights_only=True)
    checkpoint["hyper_parameters"]["calibration"] = "temperature"  # buffers still 1 and 0, as before a fit
    torch.save(checkpoint, tmp_path / "unfitted.ckpt")
    run_command(["test", "-c", str(DEFAULT_CONFIG), *SMALL, "--ckpt_path=unfitted.ckpt"])
    out = capsys.readouterr().out
    assert "temperature, never fitted: no validation ran before this checkpoint" in out
    assert "fitted on the validation split" not in out
