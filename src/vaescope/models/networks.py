"""VAE architectures. Each exposes ``encode(x) -> (mu, logvar)`` and ``decode(z) -> logits``;
the rest of vaescope relies on nothing else (see :class:`vaescope.models.objectives.LatentModel`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from vaescope.core.config import ModelConfig
from vaescope.core.errors import VaescopeError
from vaescope.models.user_model import load_factory


class DenseVAE(nn.Module):
    """MLP encoder ``in-h1-...-hk-2D`` and mirrored decoder ``D-hk-...-h1-in``, ReLU between.

    With ``hidden=(256, 64, 32)`` and ``latent_dim=16`` on MNIST this is the sparsity article's 784-256-64-32-16.
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

    ``memory_format``: the layout the engine gives this model's weights and batches. Channels-last
    is oneDNN's preferred layout for these convolutions: an epoch of conv16 on MNIST takes 1.16x
    less time on a 2-core CPU than in the default layout (``vaescope bench``).
    """

    memory_format = torch.channels_last

    def __init__(self, image_shape: tuple[int, ...], channels: tuple[int, ...], dense: int,
                 latent_dim: int) -> None:
        super().__init__()
        if len(image_shape) != 3:
            raise VaescopeError(f"model.kind 'conv' needs images (C, H, W); the data are {tuple(image_shape)} per "
                                "example (vectors); use model.kind='dense'")
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


class LinearVAE(nn.Module):
    """The linear VAE of J. Lucas, G. Tucker, R. Grosse and M. Norouzi ("Don't Blame the ELBO! A Linear
    VAE Perspective on Posterior Collapse", 2019): encoder mean ``mu = A x + a``, one log-variance per
    variable (the same for every x), decoder ``W z + b``, returned as it is (a Gaussian decoder's mean).

    With a Gaussian likelihood of fixed variance sigma^2 and KL weight beta its optimum is probabilistic
    PCA (:mod:`vaescope.measures.oracle`). ``model.kind = "dense"`` with ``hidden = []`` is the same model
    with an input-dependent log-variance (a linear map of x), which has the same optimum.
    """

    def __init__(self, image_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        n_in = math.prod(image_shape)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(n_in, latent_dim))  # (B, D) means
        self.logvar = nn.Parameter(torch.zeros(latent_dim))  # (D,): sigma_j^2 = exp(logvar_j), 1 at the start
        self.decoder = nn.Sequential(nn.Linear(latent_dim, n_in), nn.Unflatten(1, self.image_shape))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.encoder(x)
        return mu, self.logvar.expand_as(mu)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # (B, ...) the mean W z + b


# The registry of model kinds: ``model.kind`` -> builder from (model config, image shape).
# Adding a kind: a builder here and a preset in ``presets/``; nothing else.
ModelBuilder = Callable[[ModelConfig, tuple[int, ...]], nn.Module]
MODEL_KINDS: dict[str, ModelBuilder] = {
    "dense": lambda m, shape: DenseVAE(shape, m.hidden, m.latent_dim),
    "conv": lambda m, shape: ConvVAE(shape, m.conv_channels, m.conv_dense, m.latent_dim),
    "linear": lambda m, shape: LinearVAE(shape, m.latent_dim),
}
# A model object handed to ``train(config, out, model=...)``: its run records this kind, and
# rebuilding it needs the object again (``load_run(dir, model=...)``).
CUSTOM_KIND = "custom"


def build_model(config: ModelConfig, image_shape: tuple[int, ...]) -> nn.Module:
    """The model a :class:`ModelConfig` describes, for images of ``image_shape`` ``(C, H, W)``.

    With ``config.factory`` (``package.module:function``) the user's function is imported and
    called as ``factory(image_shape, config)``; it must return an ``nn.Module`` with ``encode``
    and ``decode``.
    """
    if config.factory:
        factory = load_factory(config.factory)
        try:
            model = factory(tuple(image_shape), config)
        except Exception as err:  # the user's code
            raise VaescopeError(f"model factory {config.factory!r} raised {type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''}; fix the factory") from err
        if not isinstance(model, nn.Module) or not callable(getattr(model, "encode", None)) \
                or not callable(getattr(model, "decode", None)):
            raise VaescopeError(f"model factory {config.factory!r} returned {type(model).__name__}; it must "
                                "return an nn.Module with encode(x) -> (mu, logvar) and decode(z) -> logits")
        return model
    if config.kind == CUSTOM_KIND:
        raise VaescopeError("this run was trained with a model object passed to train(); pass the same "
                            "model again (train(..., model=...), load_run(dir, model=...))")
    builder = MODEL_KINDS.get(config.kind)
    if builder is None:
        raise VaescopeError(f"model.kind {config.kind!r} is unknown; use one of: {', '.join(MODEL_KINDS)}, "
                            "or model.factory = 'package.module:function' for a model of your own")
    return builder(config, tuple(image_shape))
