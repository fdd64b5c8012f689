"""The second stage of a two-stage VAE (Dai & Wipf 2019, "Diagnosing and Enhancing VAE Models").

A small VAE on the first model's codes: its input is the posterior means of the first model's
active variables ``(B, k)``, its latent space has k variables too, its decoder returns the mean of
a Gaussian over the codes (no link function: codes are unbounded). Sampling the two stages: u ~
N(0, I_k), z = decode(u), x = the first decoder's mean at z.

Dai & Wipf's second stage has three dense layers of 1024 units with a skip connection from the
input; this one is smaller (``hidden`` widths, 256-256 by default, ReLU, the same skip), sized for
the 16-variable models vaescope studies.
"""

from __future__ import annotations

import torch
from torch import nn


class SecondStageVAE(nn.Module):
    """``encode(z) -> (mu_u, logvar_u)`` ``(B, k)`` each; ``decode(u) -> z_hat`` ``(B, k)``."""

    def __init__(self, dim: int, hidden: tuple[int, ...] = (256, 256)) -> None:
        super().__init__()
        self.dim = dim
        self.hidden = tuple(hidden)
        self.encoder = _mlp(dim, hidden)
        self.encoder_head = nn.Linear(hidden[-1] + dim, 2 * dim)  # the skip: [h, z] -> (mu, logvar)
        self.decoder = _mlp(dim, hidden)
        self.decoder_head = nn.Linear(hidden[-1] + dim, dim)

    def encode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder_head(torch.cat([self.encoder(z), z], 1)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        return self.decoder_head(torch.cat([self.decoder(u), u], 1))


def _mlp(dim: int, hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip((dim, *hidden), hidden):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)
