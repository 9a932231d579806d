"""The oracle against closed forms and an independent density computation."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from binclf.data.gaussians import TwoGaussians, normal_cdf


def article() -> TwoGaussians:
    return TwoGaussians(np.array([1.0]), np.array([2.0]), 0.2, 0.2)


def test_1d_equal_scale_llr_is_the_closed_form():
    x = torch.linspace(-1.0, 4.0, 1001, dtype=torch.float64).unsqueeze(1)
    expected = (2.0 - 1.0) * (x - 1.5) / 0.2**2
    assert torch.allclose(article().log_likelihood_ratio(x), expected, rtol=0, atol=1e-12)


def test_bayes_accuracy_on_a_large_sample_agrees_with_phi():
    gaussians = TwoGaussians(np.array([0.0]), np.array([1.0]), 0.5, 0.5)
    features, targets = gaussians.sample(500_000, np.random.default_rng(1))
    correct = (gaussians.log_likelihood_ratio(features) > 0).float() == targets
    accuracy = correct.double().mean().item()
    expected = normal_cdf(1.0 / (2 * 0.5))
    assert gaussians.bayes_accuracy == pytest.approx(expected)
    standard_error = math.sqrt(expected * (1 - expected) / len(correct))
    assert abs(accuracy - expected) < 3 * standard_error


def test_article_limit_is_phi_of_2_5():
    assert article().bayes_accuracy == pytest.approx(0.99379, abs=5e-6)


def test_3d_unequal_scales_match_an_independent_density_computation():
    mean_a, mean_b = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, 2.0])
    gaussians = TwoGaussians(mean_a, mean_b, 0.7, 1.3)
    x = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    density_a = Normal(torch.tensor(mean_a), 0.7).log_prob(x).sum(dim=1, keepdim=True)
    density_b = Normal(torch.tensor(mean_b), 1.3).log_prob(x).sum(dim=1, keepdim=True)
    assert torch.allclose(gaussians.log_likelihood_ratio(x), density_b - density_a, rtol=0, atol=1e-10)
    assert gaussians.bayes_accuracy is None  # no closed form for unequal scales


def test_samples_have_the_configured_means_and_scales_per_class():
    gaussians = TwoGaussians(np.array([0.0, 1.0, 2.0]), np.array([3.0, 3.0, 3.0]), 0.5, 2.0)
    features, targets = gaussians.sample(40_000, np.random.default_rng(0))
    assert features.shape == (80_000, 3)
    for label, mean, scale in [(0.0, [0.0, 1.0, 2.0], 0.5), (1.0, [3.0, 3.0, 3.0], 2.0)]:
        group = features[targets[:, 0] == label].double()
        assert torch.allclose(group.mean(dim=0), torch.tensor(mean, dtype=torch.float64), atol=0.03)
        assert torch.allclose(group.std(dim=0), torch.full((3,), scale, dtype=torch.float64), rtol=0.02)


def test_projection_runs_along_the_mean_difference_and_inverts_the_line():
    gaussians = TwoGaussians(np.array([0.0, 0.0]), np.array([3.0, 4.0]), 1.0, 1.0)
    np.testing.assert_allclose(gaussians.direction, [0.6, 0.8])
    t = torch.linspace(-2.0, 7.0, 10)
    assert torch.allclose(gaussians.project(gaussians.line(t)).float(), t, atol=1e-5)
    # The Bayes boundary (equal scales) sits at the midpoint of the means along that line.
    assert gaussians.log_likelihood_ratio(gaussians.line(torch.tensor([2.5]))).abs().item() < 1e-5


def test_1d_projection_is_x_itself_even_when_b_lies_below_a():
    gaussians = TwoGaussians(np.array([2.0]), np.array([1.0]), 0.2, 0.2)
    x = torch.tensor([[0.3], [1.7]])
    assert torch.equal(gaussians.project(x).float(), x[:, 0])
