"""The oracle metrics, recomputed here from the test points and the tested network, and the one metric
binclf adds to torchmetrics, against numpy."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from helpers import DEFAULT_CONFIG, SMALL

from binclf.cli import run_command
from binclf.llr import INFORMATIVE_LLR
from binclf.metrics import LinearFit, PairedAccuracyGap


def test_paired_accuracy_gap_is_the_mean_difference_and_its_standard_error():
    rng = np.random.default_rng(0)
    model_correct = rng.random(1001) < 0.9
    reference_correct = rng.random(1001) < 0.93
    metric = PairedAccuracyGap()
    for part in np.array_split(np.arange(1001), 7):  # batches, as a test loop feeds them
        metric.update(torch.from_numpy(model_correct[part]), torch.from_numpy(reference_correct[part]))
    gap, standard_error = metric.compute()
    difference = reference_correct.astype(float) - model_correct.astype(float)
    assert gap.item() == pytest.approx(difference.mean(), abs=1e-12)
    assert standard_error.item() == pytest.approx(difference.std(ddof=1) / np.sqrt(1001), abs=1e-12)


def test_oracle_metrics_match_a_computation_from_the_test_points(fitted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])
    cli = run_command(["test", "-c", str(DEFAULT_CONFIG), *SMALL, "--ckpt_path", str(fitted)])
    logged = {key: float(value) for key, value in cli.trainer.callback_metrics.items()}
    features, targets = cli.datamodule.test_set
    with torch.no_grad():
        logits = cli.model.network.eval()(features).double()[:, 0].numpy()
    labels = targets[:, 0].numpy()
    llr = cli.datamodule.log_likelihood_ratio(features.double())[:, 0].numpy()

    model_correct = (logits > 0) == (labels > 0.5)
    bayes_correct = (llr > 0) == (labels > 0.5)
    difference = bayes_correct.astype(float) - model_correct.astype(float)
    assert logged["test/acc"] == pytest.approx(model_correct.mean(), abs=1e-6)
    assert logged["test/bayes_acc"] == pytest.approx(bayes_correct.mean(), abs=1e-6)
    assert logged["test/acc_gap"] == pytest.approx(difference.mean(), abs=1e-6)
    assert logged["test/acc_gap_se"] == pytest.approx(difference.std(ddof=1) / np.sqrt(len(labels)), rel=1e-5)

    informative = np.abs(llr) <= INFORMATIVE_LLR
    assert 0 < informative.sum() < len(llr)  # the band leaves points out, so the mask is tested
    masked = np.sqrt(np.mean((logits[informative] - llr[informative]) ** 2))
    unmasked = np.sqrt(np.mean((logits - llr) ** 2))
    assert logged["test/llr_rmse"] == pytest.approx(masked, rel=1e-4)
    assert abs(masked - unmasked) > 0.1 * masked


def test_linear_fit_recovers_a_known_affine_distortion_of_the_llr_exactly():
    rng = np.random.default_rng(1)
    llr = torch.from_numpy(rng.uniform(-4, 4, size=(999, 1)))
    logits = 0.65 * llr - 0.3  # a temperature error and a shifted boundary, as an undertrained network has
    metric = LinearFit()
    for part in torch.split(torch.arange(999), 128):
        metric.update(logits[part].float(), llr[part].float())
    slope, offset = metric.compute()
    assert slope.item() == pytest.approx(0.65, abs=1e-6)
    assert offset.item() == pytest.approx(-0.3, abs=1e-6)
