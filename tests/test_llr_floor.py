"""The llr floor (the error of the best possible estimator) against Monte-Carlo: many maximum-likelihood
logistic fits on fresh draws, scored on fresh test points in the band, as ``test/llr_rmse`` scores."""

from __future__ import annotations

import numpy as np
import pytest

from binclf.data.gaussians import (
    MIN_TRAINING_POINTS_IN_BAND,
    TwoGaussians,
    logistic_llr_floor,
    normal_cdf,
)
from binclf.llr import INFORMATIVE_LLR


def monte_carlo_llr_rmse(separation: float, dim: int, num_per_class: int, fits: int, seed: int) -> float:
    """RMS over fits and test points of (fitted llr − true llr), logistic regression fitted by Newton's
    method on each fresh training draw; classes at ∓separation/2 along the first axis, unit scale."""
    rng = np.random.default_rng(seed)
    shift = np.zeros(dim)
    shift[0] = separation / 2

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([rng.standard_normal((n, dim)) - shift, rng.standard_normal((n, dim)) + shift])
        return x, np.repeat([0.0, 1.0], n)

    test, _ = draw(100_000)
    test_llr = separation * test[:, 0]
    keep = np.abs(test_llr) <= INFORMATIVE_LLR
    test_design = np.column_stack([test[keep], np.ones(keep.sum())])
    squared_errors = []
    for _ in range(fits):
        x, y = draw(num_per_class)
        design = np.column_stack([x, np.ones(len(x))])
        beta = np.zeros(dim + 1)
        beta[0] = separation  # start at the truth: Newton then converges in a few steps
        for _ in range(100):
            p = 1 / (1 + np.exp(-design @ beta))
            step = np.linalg.solve(design.T @ (design * (p * (1 - p))[:, None]), design.T @ (y - p))
            beta += step
            if np.abs(step).max() < 1e-10:
                break
        squared_errors.append(np.mean((test_design @ beta - test_llr[keep]) ** 2))
    return float(np.sqrt(np.mean(squared_errors)))


@pytest.mark.parametrize(
    ("scale", "dim", "num_per_class"),
    [(0.2, 1, 10_000), (0.5, 2, 1_000)],  # the article's setting; a wider one in two dimensions
)
def test_the_floor_matches_monte_carlo_within_15_percent(scale, dim, num_per_class):
    gaussians = TwoGaussians(np.full(dim, 1.0), np.full(dim, 2.0), scale, scale)
    floor, reason = gaussians.llr_rmse_floor(num_per_class, INFORMATIVE_LLR)
    assert floor is not None, reason
    separation = np.sqrt(dim) / scale
    simulated = monte_carlo_llr_rmse(separation, dim, num_per_class, fits=300, seed=0)
    assert floor == pytest.approx(simulated, rel=0.15)


def test_below_the_training_point_threshold_the_asymptotic_floor_is_too_optimistic_and_withheld():
    gaussians = TwoGaussians(np.array([1.0]), np.array([2.0]), 0.2, 0.2)
    floor, reason = gaussians.llr_rmse_floor(1_000, INFORMATIVE_LLR)
    assert floor is None
    assert f"fewer than {MIN_TRAINING_POINTS_IN_BAND}" in reason
    asymptotic = logistic_llr_floor(5.0, 1, 1_000, INFORMATIVE_LLR)
    assert monte_carlo_llr_rmse(5.0, 1, 1_000, fits=300, seed=0) > 1.2 * asymptotic


def test_unequal_scales_have_no_floor_and_say_why():
    floor, reason = TwoGaussians(np.array([1.0]), np.array([2.0]), 0.2, 0.3).llr_rmse_floor(10_000, 4.0)
    assert floor is None
    assert "scales differ" in reason


def test_the_floor_shrinks_as_one_over_the_root_of_the_training_size():
    small = logistic_llr_floor(5.0, 1, 10_000, INFORMATIVE_LLR)
    large = logistic_llr_floor(5.0, 1, 1_000_000, INFORMATIVE_LLR)
    assert small / large == pytest.approx(10.0, rel=1e-9)


@pytest.mark.slow
def test_a_test_run_logs_the_floor_of_its_training_size_and_its_efficiency(binclf, capsys):
    binclf("fit", "--data.num_samples=10000")
    capsys.readouterr()
    metrics = binclf("test", "--data.num_samples=10000").trainer.callback_metrics
    out = capsys.readouterr().out
    # The article's data: means 1 and 2, scale 0.2, so 5 scales apart, in one dimension.
    floor = logistic_llr_floor(separation=5.0, dim=1, num_per_class=10_000, band=INFORMATIVE_LLR)
    assert float(metrics["test/llr_floor"]) == pytest.approx(floor, rel=1e-6)
    efficiency = metrics["test/llr_rmse"] / metrics["test/llr_floor"]
    assert float(metrics["test/llr_efficiency"]) == pytest.approx(float(efficiency), rel=1e-6)
    assert f"llr RMSE floor        {floor:.3f}" in out
    assert f"efficiency            {float(efficiency):.2f}" in out


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        # |llr| ≤ 4 is |x − 1.5| ≤ 0.16, which holds 1.7 to 3.3 scales from either class mean
        (["--data.num_samples=1000"], f"only {2000 * (normal_cdf(-1.7) - normal_cdf(-3.3)):,.0f} training "),
        (["--data.scale=[0.2, 0.3]"], "the scales differ"),
    ],
)
def test_where_the_floor_does_not_apply_the_summary_says_why_and_no_efficiency_is_logged(
    binclf, capsys, settings, reason
):
    binclf("fit", *settings)
    capsys.readouterr()
    metrics = binclf("test", *settings).trainer.callback_metrics
    out = capsys.readouterr().out
    assert "test/llr_rmse" in metrics
    assert "test/llr_efficiency" not in metrics
    assert "test/llr_floor" not in metrics
    assert f"efficiency            none: {reason}" in out


def test_classes_that_barely_overlap_leave_no_point_to_score_the_llr_and_the_summary_says_so(binclf, capsys):
    """At scale 0.1 |llr| ≤ 4 is |x − 1.5| ≤ 0.04, 4.6 scales from either mean: none of the test points."""
    binclf("fit", "--data.scale=0.1")
    capsys.readouterr()
    metrics = binclf("test", "--data.scale=0.1").trainer.callback_metrics
    out = capsys.readouterr().out
    assert not [key for key in metrics if key.startswith("test/llr_")]
    assert "llr RMSE              none: no test point lies where |llr| ≤ 4" in out


@pytest.mark.slow
def test_a_calibrated_logit_is_measured_against_the_floor_of_every_point_it_saw(binclf, capsys):
    """Its scale was fitted on the validation split, so the floor counts training and validation points;
    the training-only floor stands beside it, and the raw logit, which saw the training points only, is
    measured against that."""
    settings = ["--data.num_samples=10000", "--data.num_val_samples=3000", "--model.calibration=temperature"]
    binclf("fit", *settings)
    capsys.readouterr()
    metrics = binclf("test", *settings).trainer.callback_metrics
    out = capsys.readouterr().out
    seen = logistic_llr_floor(separation=5.0, dim=1, num_per_class=13_000, band=INFORMATIVE_LLR)
    trained = logistic_llr_floor(separation=5.0, dim=1, num_per_class=10_000, band=INFORMATIVE_LLR)
    assert float(metrics["test/llr_floor"]) == pytest.approx(seen, rel=1e-6)
    assert float(metrics["test/llr_floor_train"]) == pytest.approx(trained, rel=1e-6)
    rmse, raw_rmse = float(metrics["test/llr_rmse"]), float(metrics["test/llr_rmse_raw"])
    assert float(metrics["test/llr_efficiency"]) == pytest.approx(rmse / seen, rel=1e-6)
    assert float(metrics["test/llr_efficiency_train_floor"]) == pytest.approx(rmse / trained, rel=1e-6)
    assert float(metrics["test/llr_efficiency_raw"]) == pytest.approx(raw_rmse / trained, rel=1e-6)
    assert (
        f"llr RMSE floor        {seen:.3f}   (training and validation points; training only {trained:.3f})"
        in out
    )
    assert (
        f"efficiency            {rmse / seen:.2f}   (against the training-only floor {rmse / trained:.2f}"
        in out
    )
