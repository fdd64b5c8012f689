"""A small LeNet-like classifier of 28x28 grey images, whose penultimate layer gives the features
of vaescope's generation score (:mod:`vaescope.measures.frechet`): no download, trained by vaescope.

conv 5x5 (1 -> 16) ReLU, max-pool 2, conv 5x5 (16 -> 32) ReLU, max-pool 2, dense 512 -> 128 ReLU
(the features), dense 128 -> 10 (logits). Inputs are images in [0, 1], ``(B, 1, 28, 28)``.
"""

from __future__ import annotations

import torch
from torch import nn

FEATURES = 128
CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)


class LeNet(nn.Module):
    """``features(x) -> (B, 128)``; ``forward(x) -> (B, 10)`` logits."""

    num_features = FEATURES  # what torchmetrics' FrechetInceptionDistance(feature=...) reads

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),    # (B, 16, 12, 12)
            nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),   # (B, 32, 4, 4)
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, FEATURES), nn.ReLU(),         # (B, 128): the features
        )
        self.head = nn.Linear(FEATURES, CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
