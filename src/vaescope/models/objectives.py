"""The ELBO, written once: every training step, test metric, statistic and experiment calls here.

For a data point X with Gaussian posterior Q(z|X) = N(mu(X), sigma^2(X)) and prior N(0, I):

    -ELBO(X) = E_{z~Q} [-log P(X|z)] + beta * sum_j KL(N(mu_j, sigma_j^2) || N(0, 1))

with the closed-form KL of Kingma & Welling (2014), Appendix B (the KL article, eq. 2):

    KL_j = (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1) / 2
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from vaescope.core.config import LossConfig


class LatentModel(Protocol):
    """What vaescope needs of a VAE: an encoder and a decoder, nothing else."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` images -> ``(mu, logvar)``, each ``(B, D)``."""
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` codes -> ``(B, C, H, W)`` logits (pixel means are ``sigmoid(logits)``)."""
        ...


def kl_per_variable(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) for each variable: ``(B, D)`` -> ``(B, D)`` nats."""
    return 0.5 * (mu.square() + logvar.exp() - logvar - 1.0)


def quadratic_penalty(mu: torch.Tensor) -> torch.Tensor:
    """The mean part of the KL, mu^2 / 2, per variable: what is left without sampling ``(B, D)``."""
    return 0.5 * mu.square()


def reconstruction_error(logits: torch.Tensor, x: torch.Tensor, kind: str = "bernoulli") -> torch.Tensor:
    """-log P(X|z) up to a constant, summed over pixels: ``(B, ...)`` logits and targets -> ``(B,)``.

    ``bernoulli``: binary cross-entropy with logits (targets in [0, 1]).
    ``gaussian``: squared error of ``sigmoid(logits)``, i.e. a Gaussian decoder of variance 1/2.
    """
    logits = logits.flatten(1)
    x = x.flatten(1)
    if kind == "bernoulli":
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
    if kind == "gaussian":
        return (torch.sigmoid(logits) - x).square().sum(1)
    raise ValueError(f"unknown reconstruction kind {kind!r}")


def log_likelihood(logits: torch.Tensor, x: torch.Tensor, kind: str = "bernoulli") -> torch.Tensor:
    """log P(X|z), normalised, summed over pixels: ``(B, ...)`` logits and targets -> ``(B,)`` nats.

    ``bernoulli``: minus the cross-entropy, a normalised likelihood for binary targets (on grey
    levels it is the usual cross-entropy, not a probability of the data). ``gaussian``: the
    density of N(sigmoid(logits), 1/2) that :func:`reconstruction_error`'s squared error implies,
    -sum (x - m)^2 - (P / 2) log(pi) for P pixels.
    """
    error = reconstruction_error(logits, x, kind)
    if kind == "gaussian":
        error = error + 0.5 * x[0].numel() * math.log(math.pi)
    return -error


@dataclass
class LossTerms:
    """One minibatch's objective: ``total`` is what is minimised (a scalar);
    ``reconstruction`` ``(B,)`` and ``regularizer`` ``(B, D)`` are per example and variable."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    regularizer: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor


def loss_terms(
    model: LatentModel,
    x: torch.Tensor,
    loss: LossConfig,
    generator: torch.Generator | None = None,
    z_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LossTerms:
    """Negative ELBO of a batch ``x`` ``(B, C, H, W)``, averaged over the batch.

    With ``loss.sampling`` the decoder sees z = mu + sigma * eps (reparameterisation trick) and
    the regulariser is the KL; without it the decoder sees mu and the regulariser is mu^2 / 2
    (the articles' "no sampling, quadratic penalty kept"). ``z_hook`` may transform z before
    decoding (add noise to a variable, silence others) for interventions.
    """
    mu, logvar = model.encode(x)
    if loss.sampling:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        regularizer = kl_per_variable(mu, logvar)
    else:
        z = mu
        regularizer = quadratic_penalty(mu)
    if z_hook is not None:
        z = z_hook(z)
    reconstruction = reconstruction_error(model.decode(z), x, loss.reconstruction)
    total = reconstruction.mean() + loss.beta * regularizer.sum(1).mean()
    return LossTerms(total, reconstruction, regularizer, mu, logvar)
