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
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from vaescope.core.config import StatsConfig
from vaescope.models.adapters import as_latent_model
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
        delta = batch_mean - self.mean
        total = self.n + b
        self.mean = self.mean + delta * (b / total)
        self.m2 = self.m2 + batch_m2 + delta.square() * (self.n * b / total)
        self.n = total

    @property
    def variance(self) -> torch.Tensor:
        return self.m2 / max(self.n, 1)  # population variance, as Var_X


def _batches(data: Any, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(data, (np.ndarray, torch.Tensor)):
        for start in range(0, len(data), batch_size):
            yield torch.as_tensor(data[start : start + batch_size])
    else:  # any iterable of batches
        for batch in data:
            yield torch.as_tensor(batch)


def _as_float(batch: torch.Tensor) -> torch.Tensor:
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()


@torch.no_grad()
def latent_statistics(
    model: LatentModel,
    data: np.ndarray | torch.Tensor | Iterable[Any],
    batch_size: int = 1000,
    thresholds: StatsConfig | None = None,
    device: str | torch.device | None = None,
) -> LatentStatistics:
    """Statistics of every latent variable of ``model`` over ``data``, streamed in batches.

    ``data``: images ``(N, C, H, W)`` (uint8 = value/255, or float in [0, 1]) as a NumPy array or
    tensor, or any iterable of such batches. Memory use depends on ``batch_size``, not on N.
    ``model``: anything :func:`vaescope.as_latent_model` accepts (only its encoder is used).
    """
    model = as_latent_model(model)
    if device is None:
        params = getattr(model, "parameters", None)
        first = next(iter(params()), None) if callable(params) else None
        device = first.device if first is not None else torch.device("cpu")
    mu_moments: _Moments | None = None
    sums: dict[str, torch.Tensor] = {}
    for batch in _batches(data, batch_size):
        x = _as_float(batch.to(device, non_blocking=True))
        mu, logvar = model.encode(x)
        mu64, logvar64 = mu.double(), logvar.double()
        parts = {
            "sigma2": logvar64.exp().sum(0),
            "log_sigma2": logvar64.sum(0),
            "kl": kl_per_variable(mu64, logvar64).sum(0),
        }
        if mu_moments is None:
            mu_moments = _Moments(mu.shape[1], mu.device)
            sums = {k: torch.zeros_like(v) for k, v in parts.items()}
        mu_moments.update(mu64)
        for key, value in parts.items():
            sums[key] += value
    if mu_moments is None or mu_moments.n == 0:
        raise ValueError("latent_statistics needs at least one data point")
    n = mu_moments.n
    host = {k: v.cpu().numpy() for k, v in sums.items()}  # the one transfer to the host
    return LatentStatistics(
        n=n,
        mu_mean=mu_moments.mean.cpu().numpy(),
        mu_variance=mu_moments.variance.cpu().numpy(),
        sigma2_mean=host["sigma2"] / n,
        log_sigma2_mean=host["log_sigma2"] / n,
        kl_mean=host["kl"] / n,
        thresholds=thresholds or StatsConfig(),
    )
