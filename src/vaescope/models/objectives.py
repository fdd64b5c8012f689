"""The ELBO, written once: every training step, test metric, statistic and experiment calls here.

For a data point X with Gaussian posterior Q(z|X) = N(mu(X), sigma^2(X)) and prior N(0, I):

    -ELBO(X) = E_{z~Q} [-log P(X|z)] + beta * sum_j KL(N(mu_j, sigma_j^2) || N(0, 1))

with the closed-form KL of Kingma & Welling (2014), Appendix B (the KL article, eq. 2):

    KL_j = (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1) / 2
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vaescope.core.config import OBJECTIVES, LossConfig  # noqa: F401  (OBJECTIVES: loss.objective's values)


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
        return squared_error(logits, x)
    raise ValueError(f"unknown reconstruction kind {kind!r}")


def log_likelihood(logits: torch.Tensor, x: torch.Tensor, kind: str = "bernoulli",
                   variance: float = 0.5, link: str = "sigmoid") -> torch.Tensor:
    """log P(X|z), normalised, summed over pixels: ``(B, ...)`` logits and targets -> ``(B,)`` nats.

    ``bernoulli``: minus the cross-entropy, a normalised likelihood for binary targets (on grey
    levels it is the usual cross-entropy, not a probability of the data). ``gaussian``: the
    density of N(sigmoid(logits), variance) (:func:`gaussian_reconstruction` plus its constant);
    at the default 1/2, -sum (x - m)^2 - (P / 2) log(pi) for P pixels; ``link`` "identity": the mean
    is the output itself (vectors).
    """
    if kind == "gaussian" and (variance != 0.5 or link != "sigmoid"):
        pixels = x[0].numel()
        error = squared_error(logits, x, link)
        return -(gaussian_reconstruction(error, variance, pixels) + 0.5 * pixels * math.log(math.pi))
    error = reconstruction_error(logits, x, kind)
    if kind == "gaussian":
        error = error + 0.5 * x[0].numel() * math.log(math.pi)
    return -error


# ---------------------------------------------------------------------------- the decoder's variance

# The smallest log variance the optimal and learned variances approach (a soft floor):
# -12 is log sigma >= -6, the clip of Rybkin et al.'s sigma-VAE code.
LOG_VARIANCE_FLOOR = -12.0


def squared_error(logits: torch.Tensor, x: torch.Tensor, link: str = "sigmoid") -> torch.Tensor:
    """|m - x|^2 summed over pixels, m = sigmoid(logits) (``link`` "sigmoid", images) or the decoder's
    output itself ("identity", vectors): ``(B, ...)`` outputs and targets -> ``(B,)``."""
    mean = torch.sigmoid(logits.flatten(1)) if link == "sigmoid" else logits.flatten(1)
    return (mean - x.flatten(1)).square().sum(1)


def gaussian_reconstruction(error: torch.Tensor, variance: torch.Tensor | float, pixels: int) -> torch.Tensor:
    """-log N(x; m, variance I) up to the constant (P / 2) log(pi), from the squared error
    ``error`` = |x - m|^2 ``(B,)`` of P pixels: error / (2 variance) + (P / 2) log(2 variance).

    At variance 1/2 this is the squared error itself, vaescope's ``"gaussian"`` reconstruction
    (returned as it is, bit for bit); the dropped constant is the one :func:`log_likelihood` adds.
    """
    if isinstance(variance, float) and variance == 0.5:
        return error
    variance = torch.as_tensor(variance, dtype=error.dtype, device=error.device)
    return error / (2.0 * variance) + 0.5 * pixels * torch.log(2.0 * variance)


def optimal_variance(error: torch.Tensor, pixels: int) -> torch.Tensor:
    """The variance that minimises :func:`gaussian_reconstruction` summed over a batch: its mean
    squared error sum(error) / (B P) (Rybkin et al. 2021), above the soft floor. The gradient
    flows through it, as in their code (at the minimum it adds nothing)."""
    return torch.exp(_soft_floor(torch.log(error.mean() / pixels)))


def _soft_floor(log_variance: torch.Tensor) -> torch.Tensor:
    """log variance kept above LOG_VARIANCE_FLOOR smoothly (the sigma-VAE's softclip)."""
    return LOG_VARIANCE_FLOOR + F.softplus(log_variance - LOG_VARIANCE_FLOOR)


class DecoderVariance(nn.Module):
    """The Gaussian decoder's variance and how it moves while a model trains (``loss.objective``).

    - ``"elbo"``: ``loss.variance``, fixed (vaescope's Gaussian: 1/2);
    - ``"balanced"`` (Asperti & Trentin 2020): gamma^2, a running mean of the batches' mean squared
      error, gamma^2 <- min(gamma^2, (1 - r) gamma^2 + r MSE_batch) after each step with
      r = ``loss.balance_rate``, starting at ``loss.variance``; no gradient flows through it;
    - ``"optimal-variance"`` (Rybkin et al. 2021): each batch's own mean squared error (the
      minimiser of the Gaussian negative log-likelihood in the variance, in closed form);
    - ``"learned-variance"``: one scalar log variance trained with the model (from ``loss.variance``).

    Every step's variance and batch MSE are kept (:meth:`history`) and the buffers go into the
    checkpoint, so a resumed run continues with the same gamma. :meth:`mean_mse` is the running
    mean of the batches' MSE (rate r, no minimum, bias-corrected) for every objective: the
    variance an "optimal-variance" model is left with (:meth:`current`).
    """

    def __init__(self, loss: LossConfig) -> None:
        super().__init__()
        self.objective = loss.objective
        self.gaussian = loss.reconstruction == "gaussian"
        self.rate = loss.balance_rate
        self.fixed = loss.variance
        self.register_buffer("gamma2", torch.tensor(loss.variance, dtype=torch.float64))
        self.register_buffer("mse_mean", torch.zeros((), dtype=torch.float64))  # before bias correction
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))
        if self.objective == "learned-variance":
            self.log_variance = nn.Parameter(torch.tensor(math.log(loss.variance)))
        self._steps: list[torch.Tensor] = []  # (k, 2) chunks: per step, the variance used and the batch MSE

    @property
    def stateful(self) -> bool:
        """True when the variance depends on the steps taken (it must be kept across epochs)."""
        return self.objective in ("balanced", "learned-variance")

    def variance(self, error: torch.Tensor, pixels: int) -> torch.Tensor | float:
        """The variance this batch is scored with; ``error`` the squared errors ``(B,)`` of ``pixels`` pixels."""
        if self.objective == "elbo":
            return self.fixed
        if self.objective == "balanced":
            return self.gamma2.to(error.dtype)
        if self.objective == "optimal-variance":
            return optimal_variance(error, pixels)
        return torch.exp(_soft_floor(self.log_variance)).to(error.dtype)

    @torch.no_grad()
    def update(self, error: torch.Tensor, pixels: int, used: torch.Tensor | float) -> None:
        """After an optimizer step on a batch whose squared errors were ``error`` ``(B,)`` and
        variance ``used``: the running means move (the rule of Asperti & Trentin's code)."""
        mse = error.detach().double().mean() / pixels
        self.mse_mean.copy_((1.0 - self.rate) * self.mse_mean + self.rate * mse)
        self.updates += 1
        if self.objective == "balanced":
            self.gamma2.copy_(torch.minimum(self.gamma2, (1.0 - self.rate) * self.gamma2 + self.rate * mse))
        used = torch.as_tensor(used, dtype=torch.float64, device=mse.device).detach()
        self._steps.append(torch.stack([used.reshape(()), mse]).reshape(1, 2))

    def current(self) -> float:
        """The decoder's variance now, as a model: what measures after training score it with."""
        if self.objective == "elbo":
            return self.fixed
        if self.objective == "balanced":
            return float(self.gamma2)
        if self.objective == "optimal-variance":
            return self.mean_mse()
        return float(torch.exp(_soft_floor(self.log_variance.detach())))

    def mean_mse(self) -> float:
        """The running mean of the batches' MSE (rate r), bias-corrected as Adam's moments are:
        the mean of the batches seen, recent ones weighted more; NaN before the first step."""
        t = int(self.updates)
        return float(self.mse_mean) / (1.0 - (1.0 - self.rate) ** t) if t else math.nan

    def history(self) -> torch.Tensor:
        """``(T, 2)`` float64 on the CPU: per step so far, the variance used and the batch's MSE."""
        if not self._steps:
            return torch.zeros(0, 2, dtype=torch.float64)
        if len(self._steps) > 1:
            self._steps = [torch.cat(self._steps)]
        return self._steps[0].cpu()

    def restore_history(self, history: torch.Tensor) -> None:
        """Continue from a checkpoint's :meth:`history` ``(T, 2)``."""
        device = self.gamma2.device
        self._steps = [history.to(device=device, dtype=torch.float64).reshape(-1, 2)] if len(history) else []


@dataclass
class LossTerms:
    """One minibatch's objective: ``total`` is what is minimised (a scalar);
    ``reconstruction`` ``(B,)`` and ``regularizer`` ``(B, D)`` are per example and variable;
    ``error`` the squared errors ``(B,)`` and ``variance`` the decoder variance used, for a
    Gaussian decoder (None otherwise)."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    regularizer: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    error: torch.Tensor | None = None
    variance: torch.Tensor | float | None = None


def loss_terms(
    model: LatentModel,
    x: torch.Tensor,
    loss: LossConfig,
    generator: torch.Generator | None = None,
    z_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
    variance: DecoderVariance | None = None,
    eps: torch.Tensor | None = None,
) -> LossTerms:
    """Negative ELBO of a batch ``x`` ``(B, C, H, W)``, averaged over the batch.

    With ``loss.sampling`` the decoder sees z = mu + sigma * eps (reparameterisation trick) and
    the regulariser is the KL; without it the decoder sees mu and the regulariser is mu^2 / 2
    (the articles' "no sampling, quadratic penalty kept"). ``z_hook`` may transform z before
    decoding (add noise to a variable, silence others) for interventions. ``variance``: the
    decoder variance's state (:class:`DecoderVariance`) of a Gaussian decoder; needed for the
    objectives that keep one ("balanced", "learned-variance"), made from ``loss`` otherwise.
    ``eps``: the standard normal draw ``(B, D)`` of the reparameterisation, drawn by the caller
    (a compiled step draws it outside the graph, from the same generator); None: drawn here.
    """
    mu, logvar = model.encode(x)
    if loss.sampling:
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        regularizer = kl_per_variable(mu, logvar)
    else:
        z = mu
        regularizer = quadratic_penalty(mu)
    if z_hook is not None:
        z = z_hook(z)
    logits = model.decode(z)
    error = used = None
    if loss.reconstruction == "gaussian":
        pixels = x[0].numel()
        error = squared_error(logits, x, loss.link)
        used = variance.variance(error, pixels) if variance is not None else stateless_variance(loss, error, pixels)
        reconstruction = gaussian_reconstruction(error, used, pixels)
    else:
        reconstruction = reconstruction_error(logits, x, loss.reconstruction)
    total = reconstruction.mean() + loss.beta * regularizer.sum(1).mean()
    return LossTerms(total, reconstruction, regularizer, mu, logvar, error, used)


def stateless_variance(loss: LossConfig, error: torch.Tensor, pixels: int) -> torch.Tensor | float:
    """The variance of an objective that keeps no state ("elbo", "optimal-variance"); the others
    need their :class:`DecoderVariance`."""
    if loss.objective == "elbo":
        return loss.variance
    if loss.objective == "optimal-variance":
        return optimal_variance(error, pixels)
    raise ValueError(f"loss.objective {loss.objective!r} keeps a state across steps: pass the run's "
                     "DecoderVariance (TrainingSetup.variance)")
