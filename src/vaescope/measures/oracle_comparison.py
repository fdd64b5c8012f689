"""A measured latent space against the linear VAE's closed form (:mod:`vaescope.measures.oracle`).

:func:`compare` sets a VAE's per-variable statistics against the :class:`LinearOracle`'s prediction;
:func:`collapse_thresholds` sets the beta at which each variable collapsed in a sweep against the
predicted ``beta_j = lambda_j / sigma2``. Both match variables to the oracle's by rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaescope.core.errors import VaescopeError
from vaescope.measures.oracle import LinearOracle, _frozen, _positive, _spectrum

QUANTITIES = ("mu_variance", "sigma2_mean", "kl", "mutual_information")
# the key (or attribute) of each quantity in a measurement, e.g. vaescope's LatentStatistics
MEASURED_KEYS = {"mu_variance": "mu_variance", "sigma2_mean": "sigma2_mean", "kl": "kl_mean",
                 "mutual_information": "mi"}
DEFAULT_ACTIVE_THRESHOLD = 0.01  # Var(mu) threshold of Y. Burda, R. Grosse and R. Salakhutdinov, "Importance Weighted Autoencoders"


@dataclass(frozen=True, eq=False)
class OracleComparison:
    """A measured latent space against the :class:`LinearOracle`, row j = the oracle's variable j.

    ``order`` ``(latent_dim,)``: the measured variable placed in row j (measured Var(mu) descending).
    ``measured``, ``predicted`` and ``deviation`` (absolute, ``|measured - predicted|``) map each
    quantity compared (:data:`QUANTITIES` present in the measurement) to a ``(latent_dim,)`` array;
    ``max_deviation`` maps it to the largest deviation. ``measured_active``: Var(mu) at or above
    ``active_threshold``.
    """

    order: np.ndarray
    measured: dict[str, np.ndarray]
    predicted: dict[str, np.ndarray]
    deviation: dict[str, np.ndarray]
    max_deviation: dict[str, float]
    measured_active: np.ndarray
    predicted_active: np.ndarray
    active_threshold: float

    @property
    def measured_inactive_count(self) -> int:
        return int((~self.measured_active).sum())

    @property
    def predicted_inactive_count(self) -> int:
        return int((~self.predicted_active).sum())

    @property
    def activity_agrees(self) -> bool:
        """Whether every variable is active in the measurement exactly when the oracle says so."""
        return bool(np.array_equal(self.measured_active, self.predicted_active))

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for j in range(len(self.order)):
            row: dict[str, Any] = {"oracle_index": j, "measured_index": int(self.order[j]),
                                   "predicted_active": bool(self.predicted_active[j]),
                                   "measured_active": bool(self.measured_active[j])}
            for name in self.measured:
                row[name] = {"measured": float(self.measured[name][j]), "predicted": float(self.predicted[name][j]),
                             "deviation": float(self.deviation[name][j])}
            rows.append(row)
        return {
            "max_deviation": dict(self.max_deviation),
            "measured_inactive_count": self.measured_inactive_count,
            "predicted_inactive_count": self.predicted_inactive_count,
            "activity_agrees": self.activity_agrees,
            "active_threshold": self.active_threshold,
            "variables": rows,
        }


def _measured(measured: Any, key: str) -> Any:
    if isinstance(measured, Mapping):
        return measured.get(key)
    return getattr(measured, key, None)


def compare(measured: Mapping[str, Any] | Any, oracle: LinearOracle,
            active_threshold: float = DEFAULT_ACTIVE_THRESHOLD) -> OracleComparison:
    """Per-variable absolute deviation of a measured latent space from the oracle's prediction.

    ``measured``: a mapping (or an object with attributes, such as vaescope's ``LatentStatistics``)
    holding ``(latent_dim,)`` arrays ``mu_variance``, ``sigma2_mean``, ``kl_mean`` and optionally ``mi``
    (per-variable mutual information, nats). A VAE's variables come in any order, while the oracle's
    follow the eigenvalues; since the oracle's Var(mu) = 1 - s^2/lambda_j decreases with j, the measured
    variables are matched to it **by measured Var(mu), descending** (a stable sort: ties keep their
    order). ``active_threshold``: the Var(mu) at or above which a measured variable counts as active.
    """
    if not isinstance(oracle, LinearOracle):
        raise VaescopeError(f"oracle is a {type(oracle).__name__}; expected a LinearOracle from linear_oracle(...)")
    arrays: dict[str, np.ndarray] = {}
    for name in QUANTITIES:
        key = MEASURED_KEYS[name]
        value = _measured(measured, key)
        if value is None:
            if name == "mutual_information":
                continue
            raise VaescopeError(f"the measurement has no {key!r}; expected per-variable arrays mu_variance, "
                                "sigma2_mean and kl_mean (as vaescope's latent statistics give)")
        array = np.asarray(value, dtype=np.float64)
        if array.shape != (oracle.latent_dim,):
            raise VaescopeError(f"measured {key!r} has shape {array.shape}; expected ({oracle.latent_dim},), one value "
                                "per latent variable (build the oracle with the model's latent_dim)")
        arrays[name] = array
    threshold = float(active_threshold)
    order = np.argsort(-arrays["mu_variance"], kind="stable")
    sorted_measured = {name: _frozen(array[order]) for name, array in arrays.items()}
    predicted = {name: getattr(oracle, name) for name in sorted_measured}
    deviation = {name: _frozen(np.abs(sorted_measured[name] - predicted[name])) for name in sorted_measured}
    return OracleComparison(
        order=_frozen(order, np.int64),
        measured=sorted_measured,
        predicted=predicted,
        deviation=deviation,
        max_deviation={name: float(dev.max()) for name, dev in deviation.items()},
        measured_active=_frozen(sorted_measured["mu_variance"] >= threshold, bool),
        predicted_active=oracle.active,
        active_threshold=threshold,
    )


# ---------------------------------------------------------------------------- the beta threshold, measured

def collapse_thresholds(active_counts: Mapping[float, Any], eigenvalues: Any, sigma2: float) -> list[dict[str, Any]]:
    """Each variable's collapse threshold in beta, measured from the active counts of a beta sweep,
    against the closed form ``beta_j = lambda_j / sigma2``.

    ``active_counts``: ``{beta: [active count of each seed]}`` (any order); ``eigenvalues``: descending,
    one per latent variable (:attr:`LinearOracle.eigenvalues`). Variables are matched by rank, as
    :func:`compare` does: at a beta where the median count is m, the variables of rank 0 .. m-1 are
    active. Variable j's measured threshold lies in ``(low, high]``: ``low`` the largest beta tried at
    which it is active (None: at none), ``high`` the smallest larger beta at which it is not (None:
    it never collapsed). ``consistent``: whether the active set shrinks monotonically with beta (else
    the interval is not well defined and ``low``/``high`` come from the first collapse). ``agrees``:
    the predicted threshold lies in ``(low, high]`` (a bound missing on one side counts as open).
    """
    lam = _spectrum(eigenvalues)
    sigma2 = _positive(sigma2, "sigma2")
    if not active_counts:
        raise VaescopeError("collapse_thresholds needs the active counts of at least one beta")
    counts = {float(b): np.asarray(c, dtype=np.float64) for b, c in active_counts.items()}
    if any(c.size == 0 for c in counts.values()):
        raise VaescopeError("collapse_thresholds: a beta has no active counts; give at least one run per beta")
    betas = sorted(counts)
    medians = [float(np.median(counts[b])) for b in betas]
    monotone = all(a >= b for a, b in zip(medians, medians[1:]))
    rows = []
    for j, value in enumerate(lam):
        predicted = float(value / sigma2)
        active_at = [beta for beta, m in zip(betas, medians) if m > j]
        first_off = next((i for i, m in enumerate(medians) if m <= j), None)
        high = None if first_off is None else betas[first_off]
        low = None if first_off is None else (betas[first_off - 1] if first_off > 0 else None)
        if first_off is None and active_at:
            low = active_at[-1]
        agrees = (low is None or predicted > low) and (high is None or predicted <= high)
        rows.append({"index": j, "eigenvalue": float(value), "predicted": predicted, "low": low, "high": high,
                     "agrees": bool(agrees), "consistent": monotone})
    return rows
