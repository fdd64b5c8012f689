"""Collapse of a latent variable by noise, and its recovery (the sparsity article, Figure 3).

Start from a trained VAE. Pick an active variable j (by default the active one the decoder
needs least: the smallest reconstruction gain). Then, one epoch at a time:

1. ``noise``: raise the std of Gaussian noise added to j's sampled z by ``noise_step`` and train
   one epoch; stop raising once j's reconstruction gain falls below its KL.
2. ``hold``: keep that noise and train until j has collapsed (Var(mu_j) below the activity
   threshold and mean sigma_j^2 above the sigma^2 threshold) or ``max_hold_epochs`` pass.
3. ``recovery``: remove the noise and train until j has been active again for ``settle_epochs``
   + 1 epochs in a row (so that the gain it regains is not read at the very threshold, and a
   variable hovering at the threshold does not count), or a limit passes.

Throughout, the variables that were inactive at the start are kept inactive: the z the decoder
sees for them is fixed to 0, so they carry nothing and the network cannot hand j's role to a
revived variable (the sparsity article does the same). Gains are measured with the same zeroing
(:func:`vaescope.measures.gains.reconstruction_gain` with ``always_zero``).

After every epoch we record j's reconstruction gain (test error with mu_j set to 0 minus the
error without; the code is mu), its mean KL, Var(mu_j) and mean sigma_j^2.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from vaescope.core.config import Config, LossConfig, StatsConfig, TrainConfig
from vaescope.core.errors import VaescopeError
from vaescope.data.batches import as_float, images_to_device
from vaescope.measures.gains import reconstruction_gain
from vaescope.measures.statistics import latent_statistics
from vaescope.training.engine import prepare_training, train_epoch

log = logging.getLogger(__name__)

PHASES = ("start", "noise", "hold", "recovery")


@dataclass(frozen=True)
class NoiseCollapseSettings:
    # The variable to drive to collapse; None = the active variable with the smallest gain.
    variable: int | None = None
    # Added to the noise std before each epoch of the "noise" phase.
    noise_step: float = 0.1
    max_noise_epochs: int = 40
    max_hold_epochs: int = 20
    max_recovery_epochs: int = 30
    # Epochs trained after the variable is active again, before its gain is read (it keeps
    # growing for a few epochs after Var(mu) crosses the threshold).
    settle_epochs: int = 3
    # Test images the gain and the statistics are measured on (the first ones).
    eval_size: int = 10000
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0


@dataclass
class NoiseCollapseResult:
    """What happened to ``variable``; ``history`` holds one row per epoch (epoch 0 = before)."""

    variable: int
    kept_inactive: list[int]
    collapsed: bool
    collapse_epoch: int | None
    noise_at_stop: float          # the noise std when raising stopped
    gain_before: float
    kl_before: float
    recovered: bool
    recovery_epoch: int | None    # first epoch of the final run of active epochs without noise
    gain_after: float
    recovered_fraction: float | None  # gain_after / gain_before (None when gain_before <= 0)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- pieces

def latent_mask_hook(latent_dim: int, zeroed: list[int], variable: int | None = None,
                     noise_std: float = 0.0, generator: torch.Generator | None = None
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``z_hook`` for :func:`vaescope.models.objectives.loss_terms`: z ``(B, D)`` -> ``(B, D)`` with the
    ``zeroed`` variables set to 0 and N(0, noise_std^2) noise added to ``variable``."""
    keep = torch.ones(latent_dim)
    keep[list(zeroed)] = 0.0
    direction = torch.zeros(latent_dim)
    if variable is not None:
        direction[variable] = 1.0

    def hook(z: torch.Tensor) -> torch.Tensor:
        out = z * keep.to(z)  # out of place: z is part of the autograd graph
        if noise_std > 0 and variable is not None:
            eps = torch.randn((len(z), 1), generator=generator, device=z.device, dtype=z.dtype)
            out = out + noise_std * eps * direction.to(z)
        return out

    return hook


def _measure(model: nn.Module, x_eval: torch.Tensor, variable: int, zeroed: list[int], kind: str,
             thresholds: StatsConfig) -> dict[str, Any]:
    stats = latent_statistics(model, x_eval, thresholds=thresholds)
    gain = reconstruction_gain(model, x_eval, kind, [variable], always_zero=zeroed).gain[0]
    return {
        "gain": float(gain),
        "kl": float(stats.kl_mean[variable]),
        "mu_variance": float(stats.mu_variance[variable]),
        "sigma2_mean": float(stats.sigma2_mean[variable]),
        "active": bool(stats.active[variable]),
        "collapsed": bool(not stats.active[variable] and stats.inactive_by_sigma2[variable]),
    }


def choose_variable(model: nn.Module, x_eval: torch.Tensor, kind: str, thresholds: StatsConfig,
                    variable: int | None = None) -> tuple[int, list[int], np.ndarray]:
    """The variable to collapse, the inactive ones to keep inactive, and every variable's gain."""
    stats = latent_statistics(model, x_eval, thresholds=thresholds)
    dim = stats.latent_dim
    inactive = [j for j in range(dim) if not stats.active[j]]
    gains = reconstruction_gain(model, x_eval, kind, always_zero=inactive).gain
    active = [j for j in range(dim) if stats.active[j]]
    if variable is None:
        if not active:
            raise VaescopeError("the model has no active latent variable to collapse; train it longer")
        variable = min(active, key=lambda j: gains[j])
    elif not 0 <= variable < dim:
        raise VaescopeError(f"noise-collapse variable {variable} does not exist; choose 0..{dim - 1}")
    elif variable not in active:
        raise VaescopeError(
            f"noise-collapse variable {variable} is already inactive (Var(mu) = "
            f"{stats.mu_variance[variable]:.4f}); choose an active one: {active}")
    return variable, [j for j in inactive if j != variable], gains


# ---------------------------------------------------------------------------- the experiment

def noise_collapse(
    model: nn.Module,
    x_train: np.ndarray | torch.Tensor,
    x_test: np.ndarray | torch.Tensor,
    loss: LossConfig,
    settings: NoiseCollapseSettings = NoiseCollapseSettings(),
    thresholds: StatsConfig | None = None,
) -> NoiseCollapseResult:
    """Run the experiment on a copy of ``model`` (the caller's model is not changed).

    ``x_train``, ``x_test``: images ``(N, C, H, W)``; training uses all of ``x_train``, the
    measurements the first ``settings.eval_size`` images of ``x_test``.
    """
    thresholds = thresholds or StatsConfig()
    started = time.perf_counter()
    model = copy.deepcopy(model)
    device = next(model.parameters()).device
    train_images = images_to_device(np.asarray(x_train), device)
    x_eval = images_to_device(np.asarray(x_test[: settings.eval_size]), device)
    variable, zeroed, _ = choose_variable(model, x_eval, loss.reconstruction, thresholds, settings.variable)
    dim = int(model.encode(as_float(x_eval[:1]))[0].shape[1])

    setup = prepare_training(Config(loss=loss, train=TrainConfig(seed=settings.seed, lr=settings.lr)),
                             tuple(x_eval.shape[1:]), device, model=model)
    optimizer, shuffle, sampling_noise = setup.optimizer, setup.shuffle, setup.noise
    added_noise = torch.Generator(device=device).manual_seed(settings.seed + 2)

    history: list[dict[str, Any]] = []

    def record(epoch: int, phase: str, noise_std: float, seconds: float) -> dict[str, Any]:
        row = {"epoch": epoch, "phase": phase, "noise_std": noise_std, "seconds": seconds}
        row.update(_measure(model, x_eval, variable, zeroed, loss.reconstruction, thresholds))
        history.append(row)
        log.info(f"noise collapse: epoch {epoch:3d} {phase:8s} noise {noise_std:.2f}  gain {row['gain']:7.3f}  "
            f"KL {row['kl']:6.3f}  Var(mu) {row['mu_variance']:.4f}  sigma^2 {row['sigma2_mean']:.3f}")
        return row

    def epoch_with(noise_std: float, phase: str) -> dict[str, Any]:
        hook = latent_mask_hook(dim, zeroed, variable, noise_std, added_noise)
        t0 = time.perf_counter()
        train_epoch(model, optimizer, train_images, loss, settings.batch_size, shuffle, sampling_noise,
                    z_hook=hook)
        return record(len(history), phase, noise_std, time.perf_counter() - t0)

    first = record(0, "start", 0.0, 0.0)
    noise_std, collapse_epoch = 0.0, None
    # Phase 1: raise the noise until the gain no longer pays for the KL.
    for _ in range(settings.max_noise_epochs):
        noise_std = round(noise_std + settings.noise_step, 10)
        row = epoch_with(noise_std, "noise")
        if row["collapsed"]:
            collapse_epoch = row["epoch"]
            break
        if row["gain"] < row["kl"]:
            break
    # Phase 2: same noise, until it collapses.
    if collapse_epoch is None:
        for _ in range(settings.max_hold_epochs):
            row = epoch_with(noise_std, "hold")
            if row["collapsed"]:
                collapse_epoch = row["epoch"]
                break
    # Phase 3: no noise, until it has been active again for settle_epochs + 1 epochs in a row (a
    # variable just below the threshold may cross it back and forth; the streak must hold).
    streak = 0
    for _ in range(settings.max_recovery_epochs):
        row = epoch_with(0.0, "recovery")
        streak = streak + 1 if row["active"] else 0
        if streak > settings.settle_epochs:
            break
    recovery_epoch = history[-1]["epoch"] - streak + 1 if streak else None

    collapsed = collapse_epoch is not None
    last = history[-1]
    return NoiseCollapseResult(
        variable=variable,
        kept_inactive=zeroed,
        collapsed=collapsed,
        collapse_epoch=collapse_epoch,
        noise_at_stop=noise_std,
        gain_before=first["gain"],
        kl_before=first["kl"],
        recovered=collapsed and last["active"],
        recovery_epoch=recovery_epoch if collapsed else None,
        gain_after=last["gain"],
        recovered_fraction=last["gain"] / first["gain"] if first["gain"] > 0 else None,
        history=history,
        seconds=time.perf_counter() - started,
    )
