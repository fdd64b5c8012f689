"""The variance law and the stationary condition behind it (the stationary-condition article).

If a network keeps the ratio rho^2 = sigma^2 / mu^2 fixed, the KL of one variable becomes a function
of sigma^2 alone, eq. (1):

    KL(sigma^2; rho) = (sigma^2 (1 + rho^2) / rho^2 - log sigma^2 - 1) / 2

whose minimum lies at eq. (2): sigma^2 = rho^2 / (1 + rho^2), i.e. sigma^2 + mu^2 = 1. Averaged over
the data this gives the law (3): Var_X(mu_j) + mean_X sigma_j^2(X) = 1, derived by approximating
mean(log sigma^2) by log(mean sigma^2). This module computes the curves of eq. (1) (through the one
KL of :mod:`vaescope.models.objectives`), checks numerically where their minimum lies, and collects the
per-variable law and the two log-variance averages from measured statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from vaescope.measures.statistics import LatentStatistics
from vaescope.models.objectives import kl_per_variable

DEFAULT_RHOS: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0)


def kl_at_fixed_ratio(sigma2: np.ndarray | float, rho: float) -> np.ndarray:
    """Eq. (1): the KL of N(mu, sigma^2) from N(0, 1) when mu^2 = sigma^2 / rho^2.

    ``sigma2`` any shape, positive; returns the same shape (float64). The KL itself is
    :func:`vaescope.models.objectives.kl_per_variable`, evaluated at mu = sigma / rho.
    """
    if rho <= 0:
        raise ValueError(f"rho must be positive, got {rho}")
    s2 = torch.as_tensor(np.asarray(sigma2, dtype=np.float64))
    mu = s2.sqrt() / rho
    return kl_per_variable(mu, s2.log()).numpy()


def stationary_sigma2(rho: float | np.ndarray) -> float | np.ndarray:
    """Eq. (2): the sigma^2 where eq. (1) is smallest, rho^2 / (1 + rho^2)."""
    rho2 = np.square(rho)
    return rho2 / (1.0 + rho2)


def numerical_minimiser(rho: float, low: float = 1e-9, high: float = 10.0, tol: float = 1e-13) -> float:
    """The sigma^2 minimising eq. (1), by golden-section search on [low, high].

    Eq. (1) is convex in sigma^2 (a linear term minus a logarithm), so the search finds the
    global minimum; it never looks at eq. (2), which makes it an independent check of it.
    """
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = float(kl_at_fixed_ratio(c, rho)), float(kl_at_fixed_ratio(d, rho))
    while b - a > tol * max(1.0, a):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = float(kl_at_fixed_ratio(c, rho))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = float(kl_at_fixed_ratio(d, rho))
    return (a + b) / 2.0


@dataclass(frozen=True)
class StationaryCurves:
    """Eq. (1) on a grid, for several rho. ``sigma2`` ``(G,)``; ``kl`` ``(R, G)``; per-rho arrays ``(R,)``."""

    rhos: np.ndarray
    sigma2: np.ndarray
    kl: np.ndarray
    formula_minimiser: np.ndarray   # eq. (2)
    grid_minimiser: np.ndarray      # argmin of the plotted curve
    numerical_minimiser: np.ndarray  # golden-section search
    minimum_kl: np.ndarray          # eq. (1) at eq. (2)

    @property
    def max_abs_error(self) -> float:
        """Largest |numerical - eq. (2)| over the rhos."""
        return float(np.abs(self.numerical_minimiser - self.formula_minimiser).max())

    def to_dict(self) -> dict[str, object]:
        return {
            "rhos": self.rhos.tolist(),
            "formula_minimiser": self.formula_minimiser.tolist(),
            "grid_minimiser": self.grid_minimiser.tolist(),
            "numerical_minimiser": self.numerical_minimiser.tolist(),
            "minimum_kl": self.minimum_kl.tolist(),
            "max_abs_error": self.max_abs_error,
        }


def stationary_curves(rhos: tuple[float, ...] = DEFAULT_RHOS, points: int = 2000,
                      low: float = 1e-3, high: float = 1.5) -> StationaryCurves:
    """Eq. (1) on a log-spaced grid of ``points`` values of sigma^2 in [low, high], with its minima."""
    sigma2 = np.geomspace(low, high, points)
    rho_arr = np.asarray(rhos, dtype=np.float64)
    kl = np.stack([kl_at_fixed_ratio(sigma2, r) for r in rho_arr])
    formula = np.asarray(stationary_sigma2(rho_arr), dtype=np.float64)
    return StationaryCurves(
        rhos=rho_arr,
        sigma2=sigma2,
        kl=kl,
        formula_minimiser=formula,
        grid_minimiser=sigma2[kl.argmin(1)],
        numerical_minimiser=np.array([numerical_minimiser(r) for r in rho_arr]),
        minimum_kl=np.array([float(kl_at_fixed_ratio(f, r)) for f, r in zip(formula, rho_arr)]),
    )


@dataclass(frozen=True)
class VarianceLaw:
    """The law (3) per variable of one model; arrays ``(D,)``."""

    mu_variance: np.ndarray
    sigma2_mean: np.ndarray
    law: np.ndarray              # Var(mu) + mean sigma^2
    deviation: np.ndarray        # law - 1
    mean_log_sigma2: np.ndarray  # what the KL averages
    log_mean_sigma2: np.ndarray  # the article's approximation of it
    active: np.ndarray

    @property
    def max_abs_deviation(self) -> float:
        return float(np.abs(self.deviation).max())

    @property
    def jensen_gap(self) -> np.ndarray:
        """log(mean sigma^2) - mean(log sigma^2) >= 0: the error of the article's approximation."""
        return self.log_mean_sigma2 - self.mean_log_sigma2

    def to_dict(self) -> dict[str, object]:
        return {
            "law": self.law.tolist(),
            "max_abs_dev": self.max_abs_deviation,
            "mean_log_sigma2": self.mean_log_sigma2.tolist(),
            "log_mean_sigma2": self.log_mean_sigma2.tolist(),
            "max_jensen_gap": float(self.jensen_gap.max()),
        }


def variance_law(stats: LatentStatistics) -> VarianceLaw:
    """Collect the law (3) and both log-variance averages from measured statistics."""
    return VarianceLaw(
        mu_variance=stats.mu_variance,
        sigma2_mean=stats.sigma2_mean,
        law=stats.variance_law,
        deviation=stats.variance_law - 1.0,
        mean_log_sigma2=stats.log_sigma2_mean,
        log_mean_sigma2=np.log(stats.sigma2_mean),
        active=stats.active,
    )
