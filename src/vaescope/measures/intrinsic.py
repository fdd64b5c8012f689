"""The intrinsic dimension, two ways: read from a sweep (where the active count stops growing with
latent size), and estimated from points (scikit-dimension's TwoNN and Levina-Bickel MLE), on the
data or on the posterior means of the active variables, as a check that owes nothing to a VAE.

**Read from a sweep** (:func:`intrinsic_dimension`).

A. Asperti, "Sparsity in Variational Autoencoders", draws the lesson of collapse: for a given
architecture there seems to be an intrinsic dimension of the data; a VAE with no inactive variable
should get a larger latent space, one with inactive variables can lose them. This module reads that
dimension from a curve of active counts, precisely:

- at each latent size L_i (sorted), m_i is the **median** active count over the random seeds;
- the curve **levels off at** L_k when at least one larger size was tried (k < n) and at every
  larger size the median stays within ``tolerance`` of m_k: |m_i - m_k| <= tolerance for all i > k;
- the intrinsic dimension is m_k for the smallest such k.

The default tolerance, 0.5, lets the median of an even number of seeds move by half a variable
and nothing more: a curve that gains one variable per size never levels off. When no size
qualifies the answer is "not reached", with the reason (one size only, or still growing at the
largest size, where every variable may even be active: then the latent space is too small).

**Estimated from points** (:func:`estimate_dimension`, needs the ``dimension`` extra:
``pip install vaescope[dimension]``, scikit-dimension 0.5.0):

- TwoNN (E. Facco, M. d'Errico, A. Rodriguez and A. Laio, "Estimating the intrinsic dimension of
  datasets by a minimal neighborhood information", 2017): ``skdim.id.TwoNN()``, its defaults (the
  10% largest ratios r2/r1 discarded, a line through the origin);
- MLE (E. Levina and P. J. Bickel, "Maximum Likelihood Estimation of Intrinsic Dimension", 2004) at
  k neighbours: ``skdim.id.MLE().fit(X, n_neighbors=k)``: the local estimate
  ``(k - 1) / sum_j ln(T_k / T_j)`` at every point, combined by the mean of their inverses (D. J. C.
  MacKay and Z. Ghahramani's correction, as P. Pope et al., "The Intrinsic Dimension of Images and Its
  Impact on Learning", 2021, use it). scikit-dimension's own ``K`` argument is ignored in this
  (neighbourhood) mode: ``n_neighbors`` is what sets k.

On a stated subsample: at most ``n`` points drawn without replacement from ``numpy.random.default_rng(seed)``,
then duplicate rows dropped (a zero distance makes both estimators infinite); one column is padded
with a zero column (the estimators need two; distances are unchanged). On noisy data an estimator
measures the noise as well (it grows with the ambient dimension as k shrinks): say which points.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaescope.core.errors import VaescopeError
from vaescope.data.dataset import to_float
from vaescope.measures.information import encode_all

DEFAULT_TOLERANCE = 0.5
DEFAULT_KS = (5, 10, 20)
DEFAULT_POINTS = 2000


@dataclass(frozen=True)
class IntrinsicDimension:
    """The reading: ``value`` (the median active count where the curve levels off) and
    ``latent_size`` (that L), or both None when not reached; ``reason`` says why in words."""

    value: float | None
    latent_size: int | None
    reason: str
    latent_sizes: tuple[int, ...]
    medians: tuple[float, ...]
    tolerance: float

    @property
    def reached(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict[str, object]:
        return {"reached": self.reached, "value": self.value, "latent_size": self.latent_size,
                "reason": self.reason, "latent_sizes": list(self.latent_sizes),
                "median_active": list(self.medians), "tolerance": self.tolerance}


def _count(value: float) -> str:
    return f"{value:g}"


def intrinsic_dimension(active_counts: Mapping[int, Sequence[float]],
                        tolerance: float = DEFAULT_TOLERANCE) -> IntrinsicDimension:
    """Read the intrinsic dimension from ``{latent size: [active count of each seed]}``.

    Sizes may come in any order; each needs at least one count. See the module docstring for the
    definition. Raises ``ValueError`` on an empty curve, a size without counts or a negative tolerance.
    """
    if not active_counts:
        raise ValueError("intrinsic_dimension needs at least one latent size")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    sizes = tuple(sorted(int(s) for s in active_counts))
    for size in sizes:
        if len(active_counts[size]) == 0:
            raise ValueError(f"latent size {size} has no active counts")
    medians = tuple(float(np.median(np.asarray(active_counts[s], dtype=np.float64))) for s in sizes)

    def answer(value: float | None, size: int | None, reason: str) -> IntrinsicDimension:
        return IntrinsicDimension(value, size, reason, sizes, medians, tolerance)

    if len(sizes) == 1:
        return answer(None, None, f"not reached: only latent size {sizes[0]} was tried "
                                  f"(median {_count(medians[0])} active); a level needs a larger size to confirm it")
    for k in range(len(sizes) - 1):
        if all(abs(m - medians[k]) <= tolerance for m in medians[k + 1 :]):
            larger = ", ".join(str(s) for s in sizes[k + 1 :])
            return answer(medians[k], sizes[k],
                          f"levels off at latent size {sizes[k]}: median {_count(medians[k])} active, "
                          f"within {tolerance:g} of it at every larger size tried ({larger})")
    last, before = medians[-1], medians[-2]
    if last >= sizes[-1]:
        why = (f"every variable is active at the largest latent size, {sizes[-1]}: "
               "try larger latent spaces")
    elif last > before:
        why = (f"the median active count still grows at the largest sizes ({_count(before)} at {sizes[-2]}, "
               f"{_count(last)} at {sizes[-1]}): try larger latent spaces")
    else:
        why = (f"the median active count still moves by more than {tolerance:g} between the largest sizes "
               f"({_count(before)} at {sizes[-2]}, {_count(last)} at {sizes[-1]}): try more seeds or larger sizes")
    return answer(None, None, "not reached: " + why)


# ---------------------------------------------------------------------------- estimated from points


@dataclass(frozen=True)
class DimensionEstimates:
    """Estimates of the intrinsic dimension of a point cloud: ``twonn``, ``mle`` ``{k: estimate}``;
    ``n`` points used (of ``n_given``, after ``duplicates`` duplicate rows were dropped) in ``ambient``
    dimensions; ``seed`` of the subsample; ``what`` the points are, in words."""

    twonn: float
    mle: dict[int, float]
    n: int
    n_given: int
    duplicates: int
    ambient: int
    seed: int
    what: str = "points"

    @property
    def settings(self) -> str:
        return (f"{self.n} of {self.n_given} points (seed {self.seed}, {self.duplicates} duplicates dropped), "
                f"{self.ambient} dimensions; TwoNN (scikit-dimension defaults), MLE at k = "
                f"{', '.join(str(k) for k in self.mle)} (Levina-Bickel, inverses averaged)")

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "twonn": self.twonn, "mle": {str(k): v for k, v in self.mle.items()},
                "n": self.n, "n_given": self.n_given, "duplicates": self.duplicates, "ambient": self.ambient,
                "seed": self.seed, "settings": self.settings}


def _skdim() -> Any:
    try:
        return importlib.import_module("skdim")
    except ImportError:
        raise VaescopeError("estimating an intrinsic dimension needs scikit-dimension; install it with "
                            "pip install 'vaescope[dimension]' (scikit-dimension==0.5.0)") from None


def estimate_dimension(points: Any, ks: Sequence[int] = DEFAULT_KS, n: int | None = DEFAULT_POINTS,
                       seed: int = 0, what: str = "points") -> DimensionEstimates:
    """TwoNN and MLE (at each k of ``ks``) of ``points`` ``(N, ...)`` (flattened to ``(N, D)``), on at
    most ``n`` of them (None: all); see the module docstring for the settings."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim < 2 or len(array) < 3:
        raise VaescopeError(f"{what} have shape {array.shape}; estimating a dimension needs (N, D) with N >= 3")
    array = array.reshape(len(array), -1)
    if array.shape[1] == 0:
        raise VaescopeError(f"{what} have no columns (shape {array.shape}); nothing to estimate")
    if not np.all(np.isfinite(array)):
        raise VaescopeError(f"{what} hold NaN or infinite values; estimate on finite points")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 2:
        raise VaescopeError(f"ks is {list(ks)}; expected neighbour counts >= 2, e.g. 5, 10, 20")
    given = len(array)
    chosen = np.random.default_rng(seed).permutation(given)[: n or given]
    subset = np.unique(array[np.sort(chosen)], axis=0)
    duplicates = len(chosen) - len(subset)
    if len(subset) <= max(ks) + 1:
        raise VaescopeError(f"{what}: {len(subset)} distinct points for k up to {max(ks)}; give more points or "
                            "smaller k")
    ambient = array.shape[1]
    if ambient == 1:
        subset = np.column_stack([subset, np.zeros(len(subset))])
    skdim = _skdim()
    twonn = float(skdim.id.TwoNN().fit(subset).dimension_)
    mle = {k: float(skdim.id.MLE().fit(subset, n_neighbors=k).dimension_) for k in ks}
    return DimensionEstimates(twonn, mle, len(subset), given, duplicates, ambient, seed, what)


def flat_points(x: Any) -> np.ndarray:
    """Data ``(N, ...)`` as vectors ``(N, D)``: uint8 images as value / 255, the rest as they are."""
    array = np.asarray(x.cpu() if hasattr(x, "cpu") else x)
    return (to_float(array) if array.dtype == np.uint8 else array).reshape(len(array), -1)


def data_and_code_dimensions(model: Any, x: Any, active: Any, ks: Sequence[int] = DEFAULT_KS,
                             n: int | None = DEFAULT_POINTS, seed: int = 0,
                             data_words: str = "the data") -> dict[str, DimensionEstimates | None]:
    """``{"data": estimates on x (N, ...), "codes": on the posterior means of the ``active`` (D,) bool
    variables over x, or None when none is active}``, on the same subsample size and seed; the model is
    only read (:func:`vaescope.measures.information.encode_all` runs it untouched)."""
    data = estimate_dimension(flat_points(x), ks, n, seed, what=data_words)
    active = np.asarray(active, dtype=bool)
    if not active.any():
        return {"data": data, "codes": None}
    mu, _ = encode_all(model, x, 2000)
    codes = estimate_dimension(mu.double().cpu().numpy()[:, active], ks, n, seed,
                               what=f"the posterior means of the {int(active.sum())} active variables")
    return {"data": data, "codes": codes}
