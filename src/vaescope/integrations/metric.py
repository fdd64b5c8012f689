"""vaescope's latent statistics as a ``torchmetrics.Metric``: accumulated batch by batch, reduced across processes.

:class:`LatentStatisticsMetric` gives, from the encodings ``(mu, logvar)`` it is updated with, the
quantities of the :class:`~vaescope.measures.statistics.LatentStatistics` that :func:`~vaescope.measures.statistics.latent_statistics`
computes from the model and the data: Var_X(mu) (population variance, ddof 0, as there), mean
sigma^2, mean log sigma^2, mean KL per variable, the variance law and the active mask (its
``thresholds``, the same StatsConfig default).

**Reduction.** Var(mu) is not accumulated as sum mu^2 - (sum mu)^2 / n: that difference cancels
catastrophically when |mean| >> std (even in float64: a code at 1e8 +- 1 loses every digit).
The state ``moments`` ``(3, D)`` float64 holds [count, mean, M2] (M2 = sum of squared deviations
from the mean), and batches and processes are merged with the pairwise formula of Chan, Golub &
LeVeque (1979), the one ``latent_statistics`` uses:

    n = n_a + n_b,  delta = mean_b - mean_a,  mean = mean_a + delta n_b / n,
    M2 = M2_a + M2_b + delta^2 n_a n_b / n.

It is the state's ``dist_reduce_fx``: torchmetrics hands it the states of every process stacked
``(P, 3, D)`` (and ``forward``/``merge_state`` hand it two), which it folds left to right. The
other states (sums of sigma^2, log sigma^2 and KL, float64) reduce with "sum".

torchmetrics is imported here only: it is an optional extra, and importing vaescope does not import it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchmetrics import Metric

from vaescope.core.config import StatsConfig
from vaescope.core.errors import VaescopeError
from vaescope.measures.statistics import LatentStatistics
from vaescope.measures.statistics import merge_moments as pairwise_merge
from vaescope.models.objectives import kl_per_variable


def merge_moments(stacked: torch.Tensor) -> torch.Tensor:
    """Fold ``(P, 3, D)`` [count, mean, M2] states into one ``(3, D)`` (Chan et al.'s pairwise merge)."""
    merged = stacked[0]
    for other in stacked[1:]:
        merged = torch.stack(pairwise_merge(*merged, *other))
    return merged


class LatentStatisticsMetric(Metric):
    """Per-variable statistics of ``latent_dim`` latent variables from encodings, as a torchmetrics Metric.

    ``update(mu, logvar)``: a batch of encodings, each ``(B, D)`` (latent maps ``(B, C, h, w)`` are
    flattened row-major, as :func:`vaescope.as_latent_model` does). ``compute()``: a dict of tensors
    with the keys of :class:`~vaescope.measures.statistics.LatentStatistics`, reduced over every
    process under DDP; ``statistics()``: the same as a ``LatentStatistics``. ``thresholds``: the StatsConfig of its activity verdicts.
    Other keyword arguments go to ``torchmetrics.Metric`` (``sync_on_compute``, ``process_group``, ...).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    moments: torch.Tensor
    sigma2_sum: torch.Tensor
    log_sigma2_sum: torch.Tensor
    kl_sum: torch.Tensor

    def __init__(self, latent_dim: int, thresholds: StatsConfig | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(latent_dim, int) or isinstance(latent_dim, bool) or latent_dim < 1:
            raise VaescopeError(f"LatentStatisticsMetric: latent_dim is {latent_dim!r}; pass latent_dim= the number "
                                "of latent variables D (>= 1)")
        self.latent_dim = latent_dim
        self.thresholds = thresholds or StatsConfig()
        zeros = torch.zeros(latent_dim, dtype=torch.float64)
        self.add_state("moments", torch.zeros(3, latent_dim, dtype=torch.float64), dist_reduce_fx=merge_moments)
        self.add_state("sigma2_sum", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("log_sigma2_sum", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("kl_sum", zeros.clone(), dist_reduce_fx="sum")

    def update(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:  # type: ignore[override]
        """Add a batch of encodings ``mu``, ``logvar``, each ``(B, D)`` (or ``(B, *latent_shape)``)."""
        if not isinstance(mu, torch.Tensor) or not isinstance(logvar, torch.Tensor) or mu.shape != logvar.shape \
                or mu.ndim < 2 or math.prod(mu.shape[1:]) != self.latent_dim:
            shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in (mu, logvar)]
            raise VaescopeError(f"LatentStatisticsMetric.update got mu {shapes[0]} and logvar {shapes[1]}; expected "
                                f"two tensors (B, {self.latent_dim}); pass latent_dim= the encoder's D")
        if len(mu) == 0:
            return
        mu64 = mu.detach().flatten(1).to(self.moments.device, torch.float64)
        logvar64 = logvar.detach().flatten(1).to(self.moments.device, torch.float64)
        batch_mean = mu64.mean(0)
        batch = torch.stack([torch.full_like(batch_mean, float(len(mu64))), batch_mean,
                             (mu64 - batch_mean).square().sum(0)])
        self.moments = merge_moments(torch.stack([self.moments, batch]))
        self.sigma2_sum += logvar64.exp().sum(0)
        self.log_sigma2_sum += logvar64.sum(0)
        self.kl_sum += kl_per_variable(mu64, logvar64).sum(0)

    def compute(self) -> dict[str, torch.Tensor]:
        """Everything seen (on every process): the fields and verdicts of ``LatentStatistics``, as tensors.

        Keys: "n" (int64 scalar); "mu_mean", "mu_variance", "sigma2_mean", "log_sigma2_mean",
        "kl_mean", "variance_law" (``(D,)`` float64); "active", "inactive_by_sigma2",
        "inactive_by_kl" (``(D,)`` bool). A dict, not the dataclass: torchmetrics post-processes what
        compute returns and refuses frozen dataclasses; :meth:`statistics` gives the dataclass.
        """
        count, mean, m2 = self.moments
        n = int(count[0].item())
        if n == 0:
            raise VaescopeError("LatentStatisticsMetric.compute(): no encodings yet; call update(mu, logvar) "
                                "with at least one example first")
        mu_variance = m2 / n
        sigma2_mean = self.sigma2_sum / n
        kl_mean = self.kl_sum / n
        return {
            "n": torch.tensor(n, dtype=torch.int64),
            "mu_mean": mean.clone(),
            "mu_variance": mu_variance,
            "sigma2_mean": sigma2_mean,
            "log_sigma2_mean": self.log_sigma2_sum / n,
            "kl_mean": kl_mean,
            "variance_law": mu_variance + sigma2_mean,
            "active": mu_variance >= self.thresholds.mu_variance_threshold,
            "inactive_by_sigma2": sigma2_mean > self.thresholds.sigma2_threshold,
            "inactive_by_kl": kl_mean < self.thresholds.kl_threshold,
        }

    def statistics(self) -> LatentStatistics:
        """:meth:`compute` as the :class:`~vaescope.measures.statistics.LatentStatistics` that
        ``latent_statistics`` returns (NumPy ``(D,)`` float64 arrays; reports and ``to_dict`` read it)."""
        values = self.compute()
        host = {key: value.cpu().numpy() for key, value in values.items() if key != "n"}
        return LatentStatistics(n=int(values["n"]), mu_mean=host["mu_mean"], mu_variance=host["mu_variance"],
                                sigma2_mean=host["sigma2_mean"], log_sigma2_mean=host["log_sigma2_mean"],
                                kl_mean=host["kl_mean"], thresholds=self.thresholds)
