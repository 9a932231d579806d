import pytest
import torch
from torch import nn

from binclf.networks import MLP, LogisticRegression


def test_article_network_layout():
    network = MLP()
    linear = [m for m in network.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(1, 64), (64, 64), (64, 1)]


def test_output_shape_and_last_layer_is_linear():
    network = MLP(input_dim=3, hidden_sizes=[8])
    assert network(torch.randn(5, 3)).shape == (5, 1)
    assert isinstance(network.layers[-1], nn.Linear)


def test_logits_are_unbounded_and_can_be_negative():
    torch.manual_seed(0)
    network = MLP()
    with torch.no_grad():
        network.layers[-1].bias.fill_(-5.0)  # any activation on the output would clip or squash this
    logits = network(torch.randn(100, 1))
    assert (logits < 0).any()
    assert (logits < -1).any()


@pytest.mark.parametrize(
    ("kwargs", "name"), [({"input_dim": 0}, "input_dim"), ({"hidden_sizes": [4, 0]}, "hidden_sizes")]
)
def test_invalid_sizes_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MLP(**kwargs)


def test_logistic_regression_is_one_linear_layer_to_a_logit():
    network = LogisticRegression(input_dim=3)
    assert [type(m) for m in network.modules()] == [LogisticRegression, nn.Linear]
    assert network(torch.randn(7, 3)).shape == (7, 1)
    with pytest.raises(ValueError, match="input_dim"):
        LogisticRegression(input_dim=0)
