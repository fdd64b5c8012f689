"""A model of a user's own, for ``vaescope train --model own_model:make`` in the tests."""

from __future__ import annotations

import math

import torch
from torch import nn


class TinyVAE(nn.Module):
    """One hidden layer; the latent size comes from ``model.latent_dim``."""

    def __init__(self, pixels: int, latent_dim: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(pixels, 24), nn.Tanh(), nn.Linear(24, 2 * latent_dim))
        self.dec = nn.Sequential(nn.Linear(latent_dim, 24), nn.Tanh(), nn.Linear(24, pixels))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.enc(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z).view(-1, *self.shape)


def make(image_shape, model_config):
    return TinyVAE(math.prod(image_shape), model_config.latent_dim, tuple(image_shape))


def broken(image_shape, model_config):
    raise RuntimeError("this factory always fails")


def not_a_model(image_shape, model_config):
    return "a string"
