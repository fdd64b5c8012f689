"""VAE architectures. Each exposes ``encode(x) -> (mu, logvar)`` and ``decode(z) -> logits``;
the rest of vaescope relies on nothing else (see :class:`vaescope.objectives.LatentModel`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig
from .errors import VaescopeError


class DenseVAE(nn.Module):
    """MLP encoder ``in-h1-...-hk-2D`` and mirrored decoder ``D-hk-...-h1-in``, ReLU between.

    With ``hidden=(256, 64, 32)`` and ``latent_dim=16`` on MNIST this is the seed's 784-256-64-32-16.
    """

    def __init__(self, image_shape: tuple[int, ...], hidden: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        n_in = math.prod(image_shape)
        widths = [n_in, *hidden]
        encoder: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths, widths[1:]):
            encoder += [nn.Linear(a, b), nn.ReLU()]
        encoder.append(nn.Linear(widths[-1], 2 * latent_dim))  # (B, 2D): mu and logvar
        self.encoder = nn.Sequential(*encoder)
        back = [latent_dim, *reversed(hidden)]
        decoder: list[nn.Module] = []
        for a, b in zip(back, back[1:]):
            decoder += [nn.Linear(a, b), nn.ReLU()]
        decoder += [nn.Linear(back[-1], n_in), nn.Unflatten(1, self.image_shape)]
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)  # (B, D) each
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # (B, C, H, W) logits


class ConvVAE(nn.Module):
    """Convolutional VAE for images whose height and width divide by 4 (28x28 MNIST: 7x7 maps).

    Encoder: conv 4x4/2 (C->c1) ReLU, conv 4x4/2 (c1->c2) ReLU, flatten, dense (-> d) ReLU,
    dense (-> 2D). Decoder: dense (D -> d) ReLU, dense (-> c2*H/4*W/4) ReLU, transposed conv
    4x4/2 (c2->c1) ReLU, transposed conv 4x4/2 (c1->C) giving logits.
    """

    def __init__(self, image_shape: tuple[int, ...], channels: tuple[int, ...], dense: int,
                 latent_dim: int) -> None:
        super().__init__()
        c, h, w = image_shape
        if h % 4 or w % 4:
            raise VaescopeError(
                f"model.kind 'conv' needs image sides divisible by 4, got {h}x{w}; use model.kind='dense'"
            )
        c1, c2 = channels
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        feature_shape = (c2, h // 4, w // 4)
        n_features = math.prod(feature_shape)
        self.encoder = nn.Sequential(
            nn.Conv2d(c, c1, 4, stride=2, padding=1), nn.ReLU(),   # (B, c1, H/2, W/2)
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(),  # (B, c2, H/4, W/4)
            nn.Flatten(),
            nn.Linear(n_features, dense), nn.ReLU(),
            nn.Linear(dense, 2 * latent_dim),                      # (B, 2D)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, dense), nn.ReLU(),
            nn.Linear(dense, n_features), nn.ReLU(),
            nn.Unflatten(1, feature_shape),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.ReLU(),  # (B, c1, H/2, W/2)
            nn.ConvTranspose2d(c1, c, 4, stride=2, padding=1),              # (B, C, H, W) logits
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


def build_model(config: ModelConfig, image_shape: tuple[int, ...]) -> nn.Module:
    """The model a :class:`ModelConfig` describes, for images of ``image_shape`` ``(C, H, W)``."""
    if config.kind == "dense":
        return DenseVAE(image_shape, config.hidden, config.latent_dim)
    if config.kind == "conv":
        return ConvVAE(image_shape, config.conv_channels, config.conv_dense, config.latent_dim)
    raise VaescopeError(f"model.kind {config.kind!r} is unknown; use 'dense' or 'conv'")
