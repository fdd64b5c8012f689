"""Disentanglement scores against known factors: the mutual information gap (MIG) and DCI.

Both read codes ``(N, D)`` (the posterior means of a model's variables; vaescope passes the *active*
ones, because binning is blind to scale: an inactive mean that moves by 1e-4 would fill the same 20
bins as an active one) and factors ``(N, K)`` (continuous, as ``synthetic:factors=K``'s, or discrete).

**MIG** (R. T. Q. Chen, X. Li, R. Grosse and D. Duvenaud, "Isolating Sources of Disentanglement in
Variational Autoencoders", 2018), estimated as in F. Locatello et al., "Challenging Common Assumptions
in the Unsupervised Learning of Disentangled Representations" (2019): every column of codes and
factors is cut into ``bins`` equal-width bins over its range (``numpy.histogram``'s edges), the
mutual information of each code with each factor is that of the binned pair (plug-in, nats), and

    MIG = mean over factors k of ( I(z_(1); v_k) - I(z_(2); v_k) ) / H(v_k)

with z_(1), z_(2) the codes of largest and second-largest information about v_k.

**DCI** (C. Eastwood and C. K. I. Williams, "A Framework for the Quantitative Evaluation of
Disentangled Representations", 2018): an importance matrix ``R`` ``(D, K)`` >= 0 says how much code d
serves to predict factor k (here the impurity importances of one random forest per factor,
scikit-learn's ``RandomForestRegressor``); then, with entropies in base K (per code) and base D (per
factor):

- disentanglement: ``sum_d rho_d (1 - H_K(R_d. / sum_k R_dk))``, ``rho_d = sum_k R_dk / sum R``;
- completeness: ``sum_k rho_k (1 - H_D(R_.k / sum_d R_dk))``, ``rho_k = sum_d R_dk / sum R``
  (the weighting of Locatello et al.'s implementation);
- informativeness: the mean over factors of the forest's R^2 on held-out points.

With one factor, every code's disentanglement is 1 (it can serve no other); with one code, every
factor's completeness is 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaescope.core.errors import VaescopeError

DEFAULT_BINS = 20  # Locatello et al.'s num_bins


def _columns(values: Any, name: str, n: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] == 0 or len(array) < 2:
        raise VaescopeError(f"{name} has shape {np.shape(values)}; expected (N, columns) with N >= 2")
    if n is not None and len(array) != n:
        raise VaescopeError(f"{name} has {len(array)} rows but the codes have {n}; give one row per point for both")
    if not np.all(np.isfinite(array)):
        raise VaescopeError(f"{name} holds NaN or infinite values; expected finite numbers")
    return array


def discretize(values: Any, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Each column of ``values`` ``(N, C)`` cut into ``bins`` equal-width bins over its range: bin ids
    ``(N, C)`` int64 in [0, bins) (a constant column is all 0)."""
    array = _columns(values, "values")
    if bins < 2:
        raise VaescopeError(f"bins is {bins}; expected at least 2")
    out = np.zeros(array.shape, dtype=np.int64)
    for c in range(array.shape[1]):
        edges = np.histogram_bin_edges(array[:, c], bins=bins)
        out[:, c] = np.clip(np.digitize(array[:, c], edges[1:-1]), 0, bins - 1)
    return out


def discrete_entropy(labels: Any) -> float:
    """Plug-in entropy (nats) of one column of discrete labels ``(N,)``."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def discrete_mutual_information(a: Any, b: Any) -> float:
    """Plug-in mutual information (nats) of two columns of discrete labels ``(N,)``:
    ``sum p(a, b) ln(p(a, b) / (p(a) p(b)))`` over the joint counts."""
    _, ia = np.unique(np.asarray(a), return_inverse=True)
    _, ib = np.unique(np.asarray(b), return_inverse=True)
    joint = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(joint, (ia.ravel(), ib.ravel()), 1.0)
    p = joint / joint.sum()
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nonzero = p > 0
    return float((p[nonzero] * np.log(p[nonzero] / (pa @ pb)[nonzero])).sum())


@dataclass(frozen=True)
class MutualInformationGap:
    """``value`` (the MIG), ``per_factor`` ``(K,)`` (the normalised gap of each factor),
    ``information`` ``(D, K)`` (nats, binned), ``factor_entropy`` ``(K,)`` (nats) and ``bins``."""

    value: float
    per_factor: np.ndarray
    information: np.ndarray
    factor_entropy: np.ndarray
    bins: int

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "per_factor": self.per_factor.tolist(),
                "information": self.information.tolist(), "factor_entropy": self.factor_entropy.tolist(),
                "bins": self.bins}


def mig_from_labels(codes: Any, factors: Any, bins: int = DEFAULT_BINS) -> MutualInformationGap:
    """MIG of already discrete ``codes`` ``(N, D)`` and ``factors`` ``(N, K)`` (labels, any integers).
    A factor of zero entropy (constant) scores 0; with one code the gap is its information itself."""
    z = np.asarray(codes)
    v = np.asarray(factors)
    z = z[:, None] if z.ndim == 1 else z
    v = v[:, None] if v.ndim == 1 else v
    info = np.array([[discrete_mutual_information(z[:, d], v[:, k]) for k in range(v.shape[1])]
                     for d in range(z.shape[1])])
    entropy = np.array([discrete_entropy(v[:, k]) for k in range(v.shape[1])])
    ranked = -np.sort(-info, axis=0)
    second = ranked[1] if len(ranked) > 1 else np.zeros(v.shape[1])
    gaps = np.divide(ranked[0] - second, entropy, out=np.zeros_like(entropy), where=entropy > 0)
    return MutualInformationGap(float(gaps.mean()), gaps, info, entropy, bins)


def mutual_information_gap(codes: Any, factors: Any, bins: int = DEFAULT_BINS) -> MutualInformationGap:
    """MIG of continuous ``codes`` ``(N, D)`` and ``factors`` ``(N, K)``, each column binned into ``bins``
    equal-width bins (:func:`discretize`); see the module docstring."""
    z = _columns(codes, "codes")
    v = _columns(factors, "factors", len(z))
    return mig_from_labels(discretize(z, bins), discretize(v, bins), bins)


# ---------------------------------------------------------------------------- DCI

def _entropy_base(p: np.ndarray, base: int, axis: int) -> np.ndarray:
    """Entropy of distributions along ``axis`` in base ``base`` (0 log 0 = 0)."""
    logs = np.log(np.where(p > 0, p, 1.0)) / math.log(base)
    return -(p * logs).sum(axis)


@dataclass(frozen=True)
class DCIScores:
    """Disentanglement, completeness, informativeness (None when not measured), the per-code and
    per-factor scores and the importance matrix ``(D, K)`` they come from."""

    disentanglement: float
    completeness: float
    informativeness: float | None
    per_code: np.ndarray
    per_factor: np.ndarray
    importance: np.ndarray
    per_factor_informativeness: np.ndarray | None = None
    settings: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"disentanglement": self.disentanglement, "completeness": self.completeness,
                "informativeness": self.informativeness, "per_code": self.per_code.tolist(),
                "per_factor": self.per_factor.tolist(), "importance": self.importance.tolist(),
                "per_factor_informativeness": (None if self.per_factor_informativeness is None
                                               else self.per_factor_informativeness.tolist()),
                "settings": self.settings}


def dci_from_importance(importance: Any) -> DCIScores:
    """Disentanglement and completeness of an importance matrix ``(D codes, K factors)`` >= 0 (see the
    module docstring); informativeness is left None. An all-zero matrix is read as uniform (scores 0)."""
    r = np.asarray(importance, dtype=np.float64)
    if r.ndim != 2 or 0 in r.shape or not np.all(np.isfinite(r)) or np.any(r < 0):
        raise VaescopeError(f"importance has shape {r.shape} or negative/non-finite entries; expected a (codes, "
                            "factors) matrix of finite values >= 0")
    if r.sum() == 0:
        r = np.ones_like(r)
    d, k = r.shape
    by_code = r.sum(1, keepdims=True)
    by_factor = r.sum(0, keepdims=True)
    p_code = np.divide(r, by_code, out=np.full_like(r, 1.0 / k), where=by_code > 0)
    p_factor = np.divide(r, by_factor, out=np.full_like(r, 1.0 / d), where=by_factor > 0)
    per_code = np.ones(d) if k == 1 else 1.0 - _entropy_base(p_code, k, axis=1)
    per_factor = np.ones(k) if d == 1 else 1.0 - _entropy_base(p_factor, d, axis=0)
    total = r.sum()
    return DCIScores(float((per_code * by_code[:, 0] / total).sum()),
                     float((per_factor * by_factor[0] / total).sum()), None, per_code, per_factor, r)


def dci(codes: Any, factors: Any, seed: int = 0, test_fraction: float = 0.2, n_estimators: int = 50,
        min_samples_leaf: int = 5, max_points: int | None = 5000) -> DCIScores:
    """DCI of ``codes`` ``(N, D)`` against ``factors`` ``(N, K)``: one scikit-learn
    ``RandomForestRegressor(n_estimators, min_samples_leaf, random_state=seed)`` per factor, fitted on a
    random ``1 - test_fraction`` of (at most ``max_points``) points; its impurity importances make the
    matrix, its R^2 on the other points the informativeness. Deterministic for a seed."""
    from sklearn.ensemble import RandomForestRegressor  # scikit-learn: an optional dependency of this measure

    z = _columns(codes, "codes")
    v = _columns(factors, "factors", len(z))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(z))[: max_points or len(z)]
    cut = round(len(order) * (1.0 - test_fraction))
    if cut < 2 or len(order) - cut < 2:
        raise VaescopeError(f"dci needs at least 2 training and 2 test points; got {len(order)} points with "
                            f"test_fraction {test_fraction}")
    train, test = order[:cut], order[cut:]
    importance = np.zeros((z.shape[1], v.shape[1]))
    r2 = np.zeros(v.shape[1])
    for k in range(v.shape[1]):
        forest = RandomForestRegressor(n_estimators=n_estimators, min_samples_leaf=min_samples_leaf,
                                       random_state=seed, n_jobs=1)
        forest.fit(z[train], v[train, k])
        importance[:, k] = forest.feature_importances_
        r2[k] = forest.score(z[test], v[test, k])
    scores = dci_from_importance(importance)
    settings = (f"random forest per factor ({n_estimators} trees, min_samples_leaf {min_samples_leaf}, seed {seed}), "
                f"{len(train)} points to fit, R^2 on {len(test)} others")
    return DCIScores(scores.disentanglement, scores.completeness, float(r2.mean()), scores.per_code,
                     scores.per_factor, importance, r2, settings)
