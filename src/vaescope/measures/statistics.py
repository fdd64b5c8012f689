"""Per-variable statistics of a VAE's latent space over a dataset, in one streaming pass.

For each latent variable j, over the data X:

- ``mu_mean``        mean_X mu_j(X)
- ``mu_variance``    Var_X mu_j(X): how much the code moves across the data
- ``sigma2_mean``    mean_X sigma_j^2(X): the posterior variance the encoder reports
- ``log_sigma2_mean`` mean_X log sigma_j^2(X) (the stationary-condition article approximates it by log ``sigma2_mean``)
- ``kl_mean``        mean_X KL(Q(z_j|X) || N(0, 1)), nats
- ``variance_law``   mu_variance + sigma2_mean, ~1 at convergence (the article's condition (3))

A variable is *inactive* when ``mu_variance`` is below a threshold (0.01, Burda et al. 2015);
two other criteria from the literature are reported beside it: ``sigma2_mean`` above 0.8
(posterior equals the prior) and ``kl_mean`` below 0.01 nats (the variable carries no information).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vaescope.core.config import StatsConfig
from vaescope.core.errors import VaescopeError
from vaescope.data.batches import BatchKey, DataSource, InputFn
from vaescope.measures.reading import encode, model_batches
from vaescope.models.adapters import as_latent_model
from vaescope.models.isolation import untouched
from vaescope.models.objectives import LatentModel, kl_per_variable


@dataclass(frozen=True)
class LatentStatistics:
    """Statistics of ``latent_dim`` variables over ``n`` data points; arrays are ``(D,)`` float64."""

    n: int
    mu_mean: np.ndarray
    mu_variance: np.ndarray
    sigma2_mean: np.ndarray
    log_sigma2_mean: np.ndarray
    kl_mean: np.ndarray
    thresholds: StatsConfig = field(default_factory=StatsConfig)

    @property
    def latent_dim(self) -> int:
        return len(self.mu_mean)

    @property
    def variance_law(self) -> np.ndarray:
        """Var_X(mu) + mean_X sigma^2: the stationary condition of A. Asperti's article says ~1."""
        return self.mu_variance + self.sigma2_mean

    @property
    def active(self) -> np.ndarray:
        """The verdict: active when Var_X(mu) reaches the threshold ``(D,)`` bool."""
        return self.mu_variance >= self.thresholds.mu_variance_threshold

    @property
    def inactive_by_sigma2(self) -> np.ndarray:
        return self.sigma2_mean > self.thresholds.sigma2_threshold

    @property
    def inactive_by_kl(self) -> np.ndarray:
        return self.kl_mean < self.thresholds.kl_threshold

    @property
    def inactive_count(self) -> int:
        return int((~self.active).sum())

    @property
    def variance_law_max_abs_dev(self) -> float:
        return float(np.abs(self.variance_law - 1.0).max())

    def to_dict(self, split: str | None = None) -> dict[str, Any]:
        """The JSON contract of ``vaescope stats --json``."""
        variables = []
        for j in range(self.latent_dim):
            variables.append({
                "index": j,
                "mu_mean": float(self.mu_mean[j]),
                "mu_variance": float(self.mu_variance[j]),
                "sigma2_mean": float(self.sigma2_mean[j]),
                "variance_law": float(self.variance_law[j]),
                "kl_mean": float(self.kl_mean[j]),
                "active": bool(self.active[j]),
                "log_sigma2_mean": float(self.log_sigma2_mean[j]),
                "inactive_by_sigma2": bool(self.inactive_by_sigma2[j]),
                "inactive_by_kl": bool(self.inactive_by_kl[j]),
            })
        return {
            "split": split,
            "n": self.n,
            "latent_dim": self.latent_dim,
            "inactive_count": self.inactive_count,
            "variance_law_max_abs_dev": self.variance_law_max_abs_dev,
            "thresholds": {
                "mu_variance": self.thresholds.mu_variance_threshold,
                "sigma2_mean": self.thresholds.sigma2_threshold,
                "kl_mean": self.thresholds.kl_threshold,
            },
            "variables": variables,
        }


def merge_moments(n_a: Any, mean_a: torch.Tensor, m2_a: torch.Tensor, n_b: Any, mean_b: torch.Tensor,
                  m2_b: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Count, mean and sum of squared deviations of two parts together (Chan et al.'s pairwise
    merge); counts may be numbers or tensors, and two empty parts give zeros."""
    total = n_a + n_b
    safe = total.clamp(min=1.0) if isinstance(total, torch.Tensor) else max(total, 1)
    delta = mean_b - mean_a
    return total, mean_a + delta * (n_b / safe), m2_a + m2_b + delta.square() * (n_a * n_b / safe)


class _Moments:
    """Streaming mean and variance (Chan et al.'s pairwise merge) in float64, kept on the device
    of the batches so that an accelerator never waits on the host between batches."""

    def __init__(self, dim: int, device: torch.device) -> None:
        self.n = 0
        self.mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(dim, dtype=torch.float64, device=device)

    def update(self, batch: torch.Tensor) -> None:  # batch (B, D) float64
        b = len(batch)
        if b == 0:
            return
        batch_mean = batch.mean(0)
        batch_m2 = (batch - batch_mean).square().sum(0)
        self.n, self.mean, self.m2 = merge_moments(self.n, self.mean, self.m2, b, batch_mean, batch_m2)

    @property
    def variance(self) -> torch.Tensor:
        return self.m2 / max(self.n, 1)  # population variance, as Var_X


@dataclass
class _Sums:
    """The streamed moments of one pass: Var(mu) by pairwise merges, the rest as sums, on the device."""

    moments: _Moments
    sigma2: torch.Tensor
    log_sigma2: torch.Tensor
    kl: torch.Tensor

    @classmethod
    def empty(cls, dim: int, device: torch.device) -> _Sums:
        zeros = [torch.zeros(dim, dtype=torch.float64, device=device) for _ in range(3)]
        return cls(_Moments(dim, device), *zeros)

    def update(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:  # (B, D) each
        mu64, logvar64 = mu.double(), logvar.double()
        self.moments.update(mu64)
        self.sigma2 += logvar64.exp().sum(0)
        self.log_sigma2 += logvar64.sum(0)
        self.kl += kl_per_variable(mu64, logvar64).sum(0)


def latent_statistics(
    model: LatentModel | Any,
    data: DataSource,
    batch_size: int = 1000,
    thresholds: StatsConfig | None = None,
    device: str | torch.device | None = None,
    *,
    batch_key: BatchKey = None,
    input_fn: InputFn | None = None,
) -> LatentStatistics:
    """Statistics of every latent variable of ``model`` over ``data``, streamed in batches.

    ``data``: anything :func:`vaescope.data.batches.iter_batches` reads: an array or tensor ``(N, ...)``
    (images, uint8 = value / 255; vectors ``(N, D)``; token ids ``(N, T)``; counts), a dict of them, or
    a DataLoader / any iterable of batches (tensors, tuples whose element ``batch_key`` (default 0) is
    the input, dicts with ``batch_key``), or anything the user's ``input_fn(batch) -> tensor`` reads.
    Memory use depends on ``batch_size`` (or the loader's batches), not on N: one pass, float64 sums.
    ``model``: anything :func:`vaescope.as_latent_model` accepts (only its encoder is used); it runs
    under :func:`vaescope.models.isolation.untouched` (every submodule in eval, put back as it was).
    """
    model = as_latent_model(model)
    sums: _Sums | None = None
    with untouched(model):
        for x in model_batches(model, data, batch_size=batch_size, batch_key=batch_key, input_fn=input_fn,
                               device=device):
            mu, logvar = encode(model, x)
            if sums is None:
                sums = _Sums.empty(mu.shape[1], mu.device)
            sums.update(mu, logvar)
    if sums is None or sums.moments.n == 0:
        raise VaescopeError("latent_statistics got no data point; give at least one row of data")
    n = sums.moments.n
    return LatentStatistics(
        n=n,
        mu_mean=sums.moments.mean.cpu().numpy(),
        mu_variance=sums.moments.variance.cpu().numpy(),
        sigma2_mean=sums.sigma2.cpu().numpy() / n,
        log_sigma2_mean=sums.log_sigma2.cpu().numpy() / n,
        kl_mean=sums.kl.cpu().numpy() / n,
        thresholds=thresholds or StatsConfig(),
    )
