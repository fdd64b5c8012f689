"""Training the second stage of a two-stage VAE on a first model's codes (Dai & Wipf 2019).

The objective is a Gaussian one, squared error / (2 gamma^2) + (k / 2) log(2 gamma^2) + KL, with
gamma^2 set by ``objective`` (:class:`vaescope.models.objectives.DecoderVariance`): by default each
batch's mean squared error (the optimal variance of Rybkin et al. 2021). Dai & Wipf learn gamma;
Asperti & Trentin's code uses the running mean squared error ("balanced"), which starts at 1 and
comes down at 1% a step: on a few hundred steps it leaves gamma^2 far above the codes' error and
the second stage half trained (tests/test_sampling.py measured it), so the batch MSE is the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vaescope.core.config import LossConfig
from vaescope.core.errors import VaescopeError
from vaescope.core.randomness import global_rng_kept
from vaescope.models.objectives import DecoderVariance, gaussian_reconstruction, kl_per_variable
from vaescope.models.two_stage import SecondStageVAE
from vaescope.training.engine import make_optimizer


@dataclass(frozen=True)
class SecondStageSettings:
    hidden: tuple[int, ...] = (256, 256)
    epochs: int = 40  # 1,600 steps on 10,000 codes; at 10 a quick table's second stage was undertrained (FD 166 vs 143)
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    objective: str = "optimal-variance"  # or "balanced", "learned-variance" (loss.objective's values)


@dataclass
class SecondStage:
    """A trained second stage: the model (eval mode), its final gamma^2 and per-epoch mean loss."""

    model: SecondStageVAE
    gamma2: float
    losses: list[float]


def train_second_stage(codes: torch.Tensor, settings: SecondStageSettings = SecondStageSettings()) -> SecondStage:
    """Fit a :class:`SecondStageVAE` to ``codes`` ``(N, k)`` (float; the first model's posterior
    means of its active variables). Deterministic for a seed: the initialisation, the data order
    and the noise come from generators seeded ``seed``, ``seed + 1`` and ``seed + 2``."""
    if codes.ndim != 2 or len(codes) < 2 or codes.shape[1] < 1:
        raise VaescopeError(f"the second stage needs codes (N >= 2, k >= 1); got shape {tuple(codes.shape)}: "
                            "does the first model have an active variable?")
    codes = codes.float()
    n, dim = codes.shape
    with global_rng_kept():
        torch.manual_seed(settings.seed)
        model = SecondStageVAE(dim, settings.hidden).to(codes.device)
    variance = DecoderVariance(LossConfig(reconstruction="gaussian", objective=settings.objective,
                                          variance=1.0)).to(codes.device)
    variance_optimizer = make_optimizer(variance, settings.lr) if list(variance.parameters()) else None
    optimizer = make_optimizer(model, settings.lr)
    shuffle = torch.Generator().manual_seed(settings.seed + 1)
    noise = torch.Generator(device=codes.device).manual_seed(settings.seed + 2)
    losses = []
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=shuffle).to(codes.device)
        total = 0.0
        for start in range(0, n, settings.batch_size):
            z = codes.index_select(0, order[start : start + settings.batch_size])
            mu, logvar = model.encode(z)
            u = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=noise, device=mu.device)
            error = (model.decode(u) - z).square().sum(1)                     # (B,)
            used = variance.variance(error, dim)
            loss = gaussian_reconstruction(error, used, dim).mean() + kl_per_variable(mu, logvar).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            if variance_optimizer is not None:
                variance_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if variance_optimizer is not None:
                variance_optimizer.step()
            variance.update(error, dim, used)
            total += float(loss.detach()) * len(z)
        losses.append(total / n)
        if not math.isfinite(losses[-1]):
            raise VaescopeError("the second stage's loss became NaN or infinite; lower its lr")
    model.eval()
    return SecondStage(model, variance.current(), losses)


@torch.no_grad()
def second_stage_codes(stage: SecondStageVAE, n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, k)`` codes: the second decoder's means at u ~ N(0, I) drawn from ``generator`` (call it
    under :func:`vaescope.models.isolation.untouched`, which yields one)."""
    device = next(stage.parameters()).device
    u = torch.randn((n, stage.dim), generator=generator, device=device)
    return stage.decode(u)
