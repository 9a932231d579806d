"""Networks that map features to one logit. The LightningModule receives one of these; it never builds one."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Fully connected ReLU network ending in a linear layer that outputs one raw logit per sample.

    The article's network is ``MLP(input_dim=1, hidden_sizes=[64, 64])``.
    """

    def __init__(self, input_dim: int = 1, hidden_sizes: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"input_dim must be at least 1, got {input_dim}")
        if any(size < 1 for size in hidden_sizes):
            raise ValueError(f"hidden_sizes must all be at least 1, got {list(hidden_sizes)}")
        layers: list[nn.Module] = []
        width = input_dim
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        # No activation after the last layer: BCEWithLogitsLoss wants the raw logit, and an output ReLU
        # would clip every class-a logit to 0, i.e. p = 0.5.
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``[n, 1]`` for features of shape ``[n, input_dim]``."""
        return self.layers(x)


class LogisticRegression(nn.Module):
    """One linear layer: logit = w·x + b. For two Gaussians with equal scales the true log-likelihood ratio
    is exactly such a linear function, so this is the Bayes-optimal family there."""

    def __init__(self, input_dim: int = 1) -> None:
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"input_dim must be at least 1, got {input_dim}")
        self.linear = nn.Linear(input_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``[n, 1]`` for features of shape ``[n, input_dim]``."""
        return self.linear(x)
