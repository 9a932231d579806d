"""The article's experiment as a bare PyTorch loop, without Lightning: the baseline binclf is timed against.

Written from the article's facts: two 1-D Gaussians (means 1.0 / 2.0, scale 0.2, 10,000 samples each) drawn
with torch after ``torch.manual_seed(0)``, a shuffled ``DataLoader`` over a ``TensorDataset`` in batches of
256, an MLP 1-64-64-1 with ReLU, ``BCEWithLogitsLoss``, plain SGD (lr 0.01) for 70 epochs, then accuracy
(p > 0.5) on fresh draws of the same size. With seed 0 it scores the article's 99.355 %.

    python benchmarks/plain_loop.py [--epochs 70] [--num-samples 10000] [--scale 0.2] [--seed 0]

Prints one JSON line: accuracy, final loss, steps, and the training loop's wall time.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn
from torch.distributions import Normal
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class ArticleNet(nn.Module):
    """The article's network: three linear layers, ReLU between them, a raw logit out. The layers are
    created in this order, so seed 0 gives the article's initial weights."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(1, 64)
        self.fc2 = nn.Linear(64, 64)
        self.fc3 = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def draw(num_per_class: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Class a around 1.0 (label 0), then class b around 2.0 (label 1), as ``[2n, 1]`` tensors."""
    features = torch.cat([Normal(mean, scale).sample((num_per_class,)) for mean in (1.0, 2.0)]).unsqueeze(1)
    labels = torch.cat([torch.zeros(num_per_class), torch.ones(num_per_class)]).unsqueeze(1)
    return features, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=70)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--scale", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    features, labels = draw(args.num_samples, args.scale)
    loader = DataLoader(TensorDataset(features, labels), batch_size=args.batch_size, shuffle=True)
    network = ArticleNet()
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.SGD(network.parameters(), lr=args.lr)

    start = time.perf_counter()
    for _ in range(args.epochs):
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss = criterion(network(inputs), targets)
            loss.backward()
            optimizer.step()
    train_seconds = time.perf_counter() - start

    test_features, test_labels = draw(args.num_samples, args.scale)
    with torch.no_grad():
        predicted = (torch.sigmoid(network(test_features)) > 0.5).float()
    accuracy = (predicted == test_labels).float().mean().item()
    steps = args.epochs * len(loader)
    print(
        json.dumps(
            {
                "accuracy": accuracy,
                "final_loss": loss.item(),
                "steps": steps,
                "train_seconds": round(train_seconds, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
