"""Generation scores on features: the Frechet distance and precision / recall / density / coverage.

**Frechet distance** (Heusel et al. 2017, the "FID" when the features are Inception's): between
Gaussians fitted to real features (mean m_r, covariance C_r) and generated ones (m_g, C_g),

    d^2 = |m_r - m_g|^2 + tr(C_r + C_g - 2 (C_r C_g)^(1/2)),

with unbiased covariances (N - 1), as torchmetrics' ``FrechetInceptionDistance`` computes them.

**Precision, recall, density, coverage** (Naeem et al. 2020, "Reliable Fidelity and Diversity
Metrics for Generative Models"), with r_k(x) the distance from x to its k-th nearest neighbour in
its own set (itself excluded), N real points X and M generated points Y:

- precision: the fraction of Y inside some ball B(X_i, r_k(X_i));
- recall: the fraction of X inside some ball B(Y_j, r_k(Y_j));
- density: (1 / kM) sum_j #{i : Y_j in B(X_i, r_k(X_i))} (can exceed 1);
- coverage: the fraction of X_i whose ball B(X_i, r_k(X_i)) holds some Y_j.

"Inside" is strict (distance < radius), as in the authors' code. Distances are Euclidean, computed
in blocks (never N x M at once in float64).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from vaescope.core.errors import VaescopeError

BLOCK_ROWS = 2048  # rows of a distance block: 2048 x M float32


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` of ``features`` ``(N, d)``, float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise VaescopeError(f"the Frechet distance needs at least 2 feature rows (N, d); got shape {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False, ddof=1).reshape(features.shape[1], features.shape[1])


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """d^2 between N(mean_a, cov_a) and N(mean_b, cov_b) (the module docstring's formula)."""
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    # tr (C_a C_b)^(1/2) = sum of the square roots of the eigenvalues of C_a C_b (real, >= 0: the
    # product is similar to C_a^(1/2) C_b C_a^(1/2)); rounding leaves tiny imaginary or negative parts.
    # This form (torchmetrics' too) needs no matrix square root, and holds for singular covariances.
    eigenvalues = np.linalg.eigvals(cov_a @ cov_b)
    root_trace = float(np.sqrt(eigenvalues.astype(np.complex128)).real.sum())
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * root_trace)


def frechet_distance_of(real: np.ndarray, generated: np.ndarray) -> float:
    """:func:`frechet_distance` of the Gaussians fitted to two feature sets ``(N, d)``, ``(M, d)``."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(generated))


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def kth_neighbour_distance(points: np.ndarray, k: int) -> np.ndarray:
    """``(N,)``: each point's distance to its k-th nearest neighbour among the others."""
    x = torch.as_tensor(np.asarray(points, dtype=np.float32))
    if not 1 <= k < len(x):
        raise VaescopeError(f"nearest_k is {k}; it must be at least 1 and below the number of points ({len(x)})")
    out = []
    for start in range(0, len(x), BLOCK_ROWS):
        block = _distances(x[start : start + BLOCK_ROWS], x)
        out.append(torch.kthvalue(block, k + 1, dim=1).values)  # the smallest is the point itself (0)
    return torch.cat(out).double().numpy()


@dataclass(frozen=True)
class PRDC:
    """Precision, recall, density and coverage (Naeem et al. 2020) with ``nearest_k`` neighbours."""

    precision: float
    recall: float
    density: float
    coverage: float
    nearest_k: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def precision_recall_density_coverage(real: np.ndarray, generated: np.ndarray, nearest_k: int = 5) -> PRDC:
    """:class:`PRDC` of generated features ``(M, d)`` against real ones ``(N, d)``."""
    x = torch.as_tensor(np.asarray(real, dtype=np.float32))
    y = torch.as_tensor(np.asarray(generated, dtype=np.float32))
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise VaescopeError(f"PRDC needs two feature sets (N, d) and (M, d) of one d; got {tuple(x.shape)} and "
                            f"{tuple(y.shape)}")
    real_radii = torch.as_tensor(kth_neighbour_distance(x.numpy(), nearest_k), dtype=torch.float32)
    fake_radii = torch.as_tensor(kth_neighbour_distance(y.numpy(), nearest_k), dtype=torch.float32)
    inside_real = torch.zeros(len(y), dtype=torch.int64)  # per generated point: real balls holding it
    recalled = torch.zeros(len(x), dtype=torch.bool)      # per real point: inside some generated ball
    covered = torch.zeros(len(x), dtype=torch.bool)       # per real point: its ball holds a generated one
    for start in range(0, len(x), BLOCK_ROWS):
        d = _distances(x[start : start + BLOCK_ROWS], y)                       # (b, M)
        in_real_ball = d < real_radii[start : start + BLOCK_ROWS, None]
        inside_real += in_real_ball.sum(0)
        covered[start : start + BLOCK_ROWS] = in_real_ball.any(1)
        recalled[start : start + BLOCK_ROWS] = (d < fake_radii[None, :]).any(1)
    return PRDC(precision=float((inside_real > 0).double().mean()), recall=float(recalled.double().mean()),
                density=float(inside_real.double().mean() / nearest_k), coverage=float(covered.double().mean()),
                nearest_k=nearest_k)
