"""The sparsity article's Table 1: per latent variable, Var(mu), mean sigma^2 and the activity verdict.

The numbers come from :func:`vaescope.measures.statistics.latent_statistics` over the test split; this module
only arranges them into rows and sets them beside the counts the articles report.
"""

from __future__ import annotations

from dataclasses import dataclass

from vaescope.measures.statistics import LatentStatistics

# Inactive variables out of 16 in the sparsity article: its Table 1 for the dense
# 784-256-64-32-16 VAE, and the table for its convolutional VAE.
ARTICLE_INACTIVE_COUNTS: dict[str, int] = {"dense16": 8, "conv16": 3}
ARTICLE_LATENT_DIM = 16  # both nets of the sparsity article


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


@dataclass(frozen=True)
class ArticleComparison:
    """Our inactive count beside the articles' (``article`` None where they report none)."""

    model: str
    ours: int
    article: int | None
    latent_dim: int

    @property
    def difference(self) -> int | None:
        return None if self.article is None else self.ours - self.article

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "ours": self.ours, "article": self.article, "latent_dim": self.latent_dim,
                "difference": self.difference}


def article_comparison(model: str, inactive_count: int, latent_dim: int) -> ArticleComparison:
    """Our inactive count beside the articles' for ``model`` (a preset name)."""
    return ArticleComparison(model, inactive_count, ARTICLE_INACTIVE_COUNTS.get(model), latent_dim)
