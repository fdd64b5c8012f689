"""Sampling versus no sampling in a 3-D latent space (the KL article, Figure 3).

The same 784-256-64-16-3 net is trained twice: as a VAE, and with z = mu and only the quadratic
penalty mu^2/2 kept (``loss.sampling = false``). For each we take the codes (mu) of test digits,
decode a grid of points from five horizontal slices of the latent space, and put a number on
how well the codes cover the prior N(0, I):

- the mean distance from prior samples to their nearest code (small when the codes fill the
  region the prior samples from, so that a generated z lands near something the decoder knows);
- the KL divergence from a Gaussian fitted to the codes to N(0, I) (0 when the codes look like
  the prior in mean and covariance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from torch import nn

from vaescope.core.errors import VaescopeError
from vaescope.data.batches import as_float


@dataclass(frozen=True)
class KLAblationSettings:
    # Test digits whose codes are shown and measured (the first ones).
    n_codes: int = 5000
    # Prior samples for the nearest-code distance.
    n_prior: int = 5000
    # Slices (levels of the last variable) and grid points per axis within a slice.
    levels: int = 5
    seed: int = 0


@dataclass
class AblationArm:
    """One trained model's side of the comparison."""

    codes: np.ndarray          # (N, 3) mu of the test digits
    labels: np.ndarray         # (N,) their classes
    slice_levels: np.ndarray   # (L,) values of z3, one per slice
    grid_levels: np.ndarray    # (L,) values of z1 and of z2 in each slice
    generations: np.ndarray    # (L, L, L, H, W): slice, row (z2), column (z1), image in [0, 1]
    nearest_code_distance: float
    fitted_mean: np.ndarray    # (3,)
    fitted_cov: np.ndarray     # (3, 3)
    fitted_kl: float
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The numbers for ``results.json``."""
        return {
            "n_codes": len(self.codes),
            "nearest_code_distance": self.nearest_code_distance,
            "gaussian_fit_kl": self.fitted_kl,
            "codes_mean": self.fitted_mean.tolist(),
            "codes_cov": self.fitted_cov.tolist(),
            "codes_std": np.sqrt(np.diag(self.fitted_cov)).tolist(),
            **self.extra,
        }


# ---------------------------------------------------------------------------- measures

def gaussian_kl_to_standard(mean: np.ndarray, cov: np.ndarray) -> float:
    """KL(N(mean, cov) || N(0, I)) in nats, for ``mean`` ``(D,)`` and ``cov`` ``(D, D)``:

        (tr(cov) + mean^T mean - D - log det cov) / 2

    (the closed form between Gaussians; with a diagonal cov it is the sum over variables of
    :func:`vaescope.models.objectives.kl_per_variable`). Infinite when cov is singular.
    """
    mean = np.asarray(mean, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    sign, logdet = np.linalg.slogdet(cov)
    if sign <= 0:
        return math.inf
    return float(0.5 * (np.trace(cov) + mean @ mean - len(mean) - logdet))


def fit_gaussian(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood mean ``(D,)`` and covariance ``(D, D)`` of ``codes`` ``(N, D)``."""
    codes = np.asarray(codes, dtype=np.float64)
    mean = codes.mean(0)
    centred = codes - mean
    return mean, centred.T @ centred / len(codes)


def mean_nearest_distance(queries: np.ndarray | torch.Tensor, points: np.ndarray | torch.Tensor,
                          chunk: int = 1000) -> float:
    """Mean over ``queries`` ``(M, D)`` of the Euclidean distance to the nearest of ``points``
    ``(N, D)``; the distance matrix is built ``chunk`` queries at a time (memory ~ chunk * N)."""
    q = torch.as_tensor(np.asarray(queries), dtype=torch.float64)
    p = torch.as_tensor(np.asarray(points), dtype=torch.float64)
    if len(q) == 0 or len(p) == 0:
        raise ValueError("mean_nearest_distance needs at least one query and one point")
    total = 0.0
    for start in range(0, len(q), chunk):
        # The direct difference, not the |a|^2 + |b|^2 - 2ab shortcut, which cancels near 0.
        distances = torch.cdist(q[start : start + chunk], p, compute_mode="donot_use_mm_for_euclid_dist")
        total += distances.min(1).values.sum().item()
    return total / len(q)


# ---------------------------------------------------------------------------- codes and generations

@torch.no_grad()
def encode_means(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """mu of images ``x`` ``(N, C, H, W)`` -> ``(N, D)`` float64."""
    model.eval()
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(x), batch_size):
        batch = as_float(torch.as_tensor(np.asarray(x[start : start + batch_size])).to(device))
        parts.append(model.encode(batch)[0].double().cpu().numpy())
    return np.concatenate(parts)


def prior_levels(levels: int) -> np.ndarray:
    """``levels`` values that split N(0, 1) into equally probable cells (their centres' quantiles)."""
    normal = NormalDist()
    return np.array([normal.inv_cdf((i + 0.5) / levels) for i in range(levels)])


@torch.no_grad()
def slice_generations(model: nn.Module, levels: np.ndarray) -> np.ndarray:
    """Decode the grid ``z = (levels[c], levels[r], levels[s])`` of a 3-D latent space.

    Returns ``(L, L, L, H, W)`` pixel means indexed by slice s (z3), row r (z2, top = largest),
    column c (z1). Only the first channel is kept (MNIST is grey).
    """
    model.eval()
    device = next(model.parameters()).device
    n = len(levels)
    s, r, c = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    z = np.stack([levels[c], levels[::-1][r], levels[s]], axis=-1).reshape(-1, 3)  # (L^3, 3)
    images = torch.sigmoid(model.decode(torch.tensor(z, dtype=torch.float32, device=device)))
    return images[:, 0].double().cpu().numpy().reshape(n, n, n, *images.shape[-2:])


def ablation_arm(model: nn.Module, x_test: np.ndarray, y_test: np.ndarray | None,
                 settings: KLAblationSettings = KLAblationSettings()) -> AblationArm:
    """Codes, generations and coverage numbers of one trained 3-D model."""
    if y_test is None:
        raise VaescopeError("the KL ablation colours codes by class; use a dataset with test labels")
    codes = encode_means(model, x_test[: settings.n_codes])
    if codes.shape[1] != 3:
        raise VaescopeError(f"the KL ablation needs a 3-D latent space, the model has {codes.shape[1]}; "
                            "use the dense3 preset")
    rng = np.random.default_rng(settings.seed)
    prior = rng.standard_normal((settings.n_prior, 3))
    # What the distance would be if the codes were themselves drawn from the prior.
    reference = mean_nearest_distance(prior, rng.standard_normal((len(codes), 3)))
    mean, cov = fit_gaussian(codes)
    levels = prior_levels(settings.levels)
    return AblationArm(
        codes=codes,
        labels=np.asarray(y_test[: settings.n_codes]),
        slice_levels=levels,
        grid_levels=levels,
        generations=slice_generations(model, levels),
        nearest_code_distance=mean_nearest_distance(prior, codes),
        fitted_mean=mean,
        fitted_cov=cov,
        fitted_kl=gaussian_kl_to_standard(mean, cov),
        extra={"prior_reference_distance": reference},
    )
