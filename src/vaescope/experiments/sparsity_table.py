"""The seed's Table 1: per latent variable, Var(mu), mean sigma^2 and the activity verdict.

The numbers come from :func:`vaescope.stats.latent_statistics` over the test split; this module
only arranges them into rows and sets them beside the counts the seed reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..stats import LatentStatistics

# Inactive variables out of 16 in the seed's sparsity article: its Table 1 for the dense
# 784-256-64-32-16 VAE, and the table for its convolutional VAE.
SEED_INACTIVE_COUNTS: dict[str, int] = {"dense16": 8, "conv16": 3}


@dataclass(frozen=True)
class VariableRow:
    index: int
    mu_variance: float
    sigma2_mean: float
    variance_law: float
    kl_mean: float
    active: bool


def variable_rows(stats: LatentStatistics) -> list[VariableRow]:
    """One row per latent variable, in index order."""
    return [
        VariableRow(j, float(stats.mu_variance[j]), float(stats.sigma2_mean[j]), float(stats.variance_law[j]),
                    float(stats.kl_mean[j]), bool(stats.active[j]))
        for j in range(stats.latent_dim)
    ]


def seed_comparison(model: str, inactive_count: int, latent_dim: int) -> dict[str, object]:
    """Our inactive count beside the seed's (``None`` where the seed reports none for ``model``)."""
    seed = SEED_INACTIVE_COUNTS.get(model)
    return {"model": model, "ours": inactive_count, "seed": seed, "latent_dim": latent_dim,
            "difference": None if seed is None else inactive_count - seed}
