"""Every activity criterion side by side: which latent variables are active, by which rule, at what threshold.

The criteria of the literature, each a number per variable j over the evaluated data:

| key | value | active when | usual thresholds |
| --- | --- | --- | --- |
| ``mu_variance`` | Var_X mu_j(X) | >= t | 0.01 (Burda et al. 2015, "active units") |
| ``sigma2_mean`` | mean_X sigma_j^2(X) | <= t | 0.8 (A. Asperti's later code: inactive above) |
| ``kl_mean`` | mean_X KL(q(z_j|X) || N(0, 1)), nats | >= t | 0.01 (vaescope's default), 0.1 (NVAE, Vahdat & Kautz 2020) |
| ``mi`` | I(x; z_j), nats (He et al. 2019) | >= t | 0.01, as KL: I(x; z_j) <= mean KL_j |
| ``reconstruction_gain`` | gain_j / max_k gain_k | >= t | 0.01 (1% of the largest gain) |

The thresholds of Var(mu), mean sigma^2 and KL are the run's ``stats.*`` settings (defaults above).

**Polarised picture.** A variable is *clearly on* when every rule calls it active with half a
decade to spare, *clearly off* when every rule calls it inactive with half a decade to spare,
and *in between* otherwise. "Half a decade" (``margin`` = sqrt(10)) is read on each criterion's
own scale of strength: the value itself for Var(mu), KL, I(x; z_j) and the relative gain, and
the shrinkage 1 - mean sigma^2 for the posterior variance (threshold 0.8 -> 0.2). So KL must be at
least 0.32 nats (sqrt(10) x NVAE's 0.1) for "on" and at most 0.0032 for "off"; mean sigma^2 at
most 0.37 for "on" and at least 0.94 for "off". The reason: a verdict that flips when a
threshold moves by less than a factor of 3 says more about the threshold than about the variable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vaescope.core.config import StatsConfig
from vaescope.measures.statistics import LatentStatistics

MARGIN = 10**0.5  # half a decade
NVAE_KL_THRESHOLD = 0.1
MI_THRESHOLD = 0.01
GAIN_RELATIVE_THRESHOLD = 0.01


@dataclass(frozen=True)
class Criterion:
    """One criterion: ``active_above`` (active when the value reaches the threshold) or active
    when the value is at most the threshold (mean sigma^2); ``relative``: the value is divided by
    its largest over the variables before it is compared (the reconstruction gain)."""

    key: str
    label: str
    unit: str
    active_above: bool = True
    relative: bool = False

    def score(self, values: np.ndarray) -> np.ndarray:
        """The value compared with a threshold: ``(D,)``."""
        values = np.asarray(values, dtype=float)
        if not self.relative:
            return values
        top = values.max(initial=0.0)
        return values / top if top > 0 else np.zeros_like(values)

    def strength(self, score: np.ndarray | float) -> np.ndarray:
        """Grows with activity, on the scale the polarisation margin is read on."""
        return np.asarray(score, dtype=float) if self.active_above else 1.0 - np.asarray(score, dtype=float)

    def is_active(self, score: np.ndarray, threshold: float) -> np.ndarray:
        return score >= threshold if self.active_above else score <= threshold


CRITERIA = {c.key: c for c in (
    Criterion("mu_variance", "Var(mu)", ""),
    Criterion("sigma2_mean", "mean sigma^2", "", active_above=False),
    Criterion("kl_mean", "KL", "nats"),
    Criterion("mi", "I(x; z_j)", "nats"),
    Criterion("reconstruction_gain", "gain / largest gain", "", relative=True),
)}


@dataclass(frozen=True)
class Rule:
    """A criterion at one threshold, with where the threshold comes from."""

    criterion: str
    threshold: float
    source: str

    @property
    def key(self) -> str:
        return f"{self.criterion}@{self.threshold:g}"

    @property
    def label(self) -> str:
        c = CRITERIA[self.criterion]
        return f"{c.label} {'>=' if c.active_above else '<='} {self.threshold:g}"


def usual_rules(thresholds: StatsConfig | None = None) -> tuple[Rule, ...]:
    """The rules of the literature, with the run's thresholds for Var(mu), mean sigma^2 and KL."""
    t = thresholds or StatsConfig()
    rules = [Rule("mu_variance", t.mu_variance_threshold, "Burda et al. 2015"),
             Rule("sigma2_mean", t.sigma2_threshold, "A. Asperti's code"),
             Rule("kl_mean", t.kl_threshold, "vaescope default")]
    if t.kl_threshold != NVAE_KL_THRESHOLD:
        rules.append(Rule("kl_mean", NVAE_KL_THRESHOLD, "NVAE"))
    rules += [Rule("mi", MI_THRESHOLD, "as KL"), Rule("reconstruction_gain", GAIN_RELATIVE_THRESHOLD, "1% of largest")]
    return tuple(rules)


@dataclass(frozen=True)
class CriteriaTable:
    """Every criterion for every variable. ``values``: criterion key -> ``(D,)`` raw values (only
    the criteria measured); ``verdicts``: rule key -> ``(D,)`` bool, True = active;
    ``polarisation``: ``(D,)`` of "on", "off", "between" (see the module docstring)."""

    values: dict[str, np.ndarray]
    rules: tuple[Rule, ...]
    verdicts: dict[str, np.ndarray]
    polarisation: np.ndarray
    margin: float = MARGIN

    @property
    def latent_dim(self) -> int:
        return len(self.polarisation)

    @property
    def disagreements(self) -> np.ndarray:
        """Indices of the variables on which the rules do not all agree."""
        stacked = np.stack([self.verdicts[r.key] for r in self.rules])
        return np.flatnonzero(stacked.any(0) & ~stacked.all(0))

    def active_count(self, rule: Rule | str) -> int:
        return int(self.verdicts[rule if isinstance(rule, str) else rule.key].sum())

    def polarisation_counts(self) -> dict[str, int]:
        return {kind: int((self.polarisation == kind).sum()) for kind in ("on", "off", "between")}

    def variable_entries(self) -> list[dict[str, Any]]:
        """Per variable: every criterion's value, every rule's verdict, the polarisation (JSON)."""
        entries = []
        for j in range(self.latent_dim):
            entry: dict[str, Any] = {key: float(v[j]) for key, v in self.values.items()}
            if "reconstruction_gain" in self.values:
                entry["reconstruction_gain_relative"] = float(
                    CRITERIA["reconstruction_gain"].score(self.values["reconstruction_gain"])[j])
            entry["active_by"] = {r.key: bool(self.verdicts[r.key][j]) for r in self.rules}
            entry["polarisation"] = str(self.polarisation[j])
            entries.append(entry)
        return entries

    def to_dict(self) -> dict[str, Any]:
        """The summary: rules with their active counts, the polarisation, the disagreements."""
        return {
            "rules": [{"key": r.key, "criterion": r.criterion, "threshold": r.threshold, "source": r.source,
                       "active_count": self.active_count(r)} for r in self.rules],
            "polarisation": self.polarisation_counts(),
            "polarisation_margin": self.margin,
            "disagreements": self.disagreements.tolist(),
        }


def criteria_table(
    stats: LatentStatistics,
    mi: np.ndarray | None = None,
    gain: np.ndarray | None = None,
    rules: tuple[Rule, ...] | None = None,
    margin: float = MARGIN,
) -> CriteriaTable:
    """The criteria of every variable from ``stats``, per-variable information ``mi`` ``(D,)``
    and reconstruction gains ``gain`` ``(D,)`` (either may be None: its rules are left out).
    ``rules`` default to :func:`usual_rules` with ``stats.thresholds``."""
    values = {"mu_variance": stats.mu_variance, "sigma2_mean": stats.sigma2_mean, "kl_mean": stats.kl_mean}
    for key, given in (("mi", mi), ("reconstruction_gain", gain)):
        if given is not None:
            given = np.asarray(given, dtype=float)
            if given.shape != (stats.latent_dim,):
                raise ValueError(f"{key} has shape {given.shape}; expected ({stats.latent_dim},)")
            values[key] = given
    rules = tuple(r for r in (rules or usual_rules(stats.thresholds)) if r.criterion in values)
    scores = {key: CRITERIA[key].score(v) for key, v in values.items()}
    verdicts = {r.key: CRITERIA[r.criterion].is_active(scores[r.criterion], r.threshold) for r in rules}
    on = np.ones(stats.latent_dim, dtype=bool)
    off = np.ones(stats.latent_dim, dtype=bool)
    for r in rules:
        c = CRITERIA[r.criterion]
        strength, edge = c.strength(scores[r.criterion]), float(c.strength(r.threshold))
        on &= strength >= edge * margin
        off &= strength <= edge / margin
    polarisation = np.where(on, "on", np.where(off, "off", "between"))
    return CriteriaTable(values, rules, verdicts, polarisation, margin)


# ---------------------------------------------------------------------------- threshold sweeps

@dataclass(frozen=True)
class ThresholdSweep:
    """The number of active variables as one criterion's threshold sweeps its range.

    ``thresholds`` and ``active_counts`` are ``(G,)``; ``usual``: the rules of this criterion
    (their thresholds are marked in the figure); ``log_scale``: thresholds spaced by ratio.
    """

    criterion: str
    thresholds: np.ndarray
    active_counts: np.ndarray
    usual: tuple[Rule, ...]
    log_scale: bool

    def to_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "thresholds": self.thresholds.tolist(),
                "active_counts": self.active_counts.astype(int).tolist(),
                "usual": [r.key for r in self.usual], "log_scale": self.log_scale}


def _sweep_range(score: np.ndarray, marks: list[float], log_scale: bool) -> tuple[float, float]:
    if not log_scale:  # mean sigma^2: 0 to just past the largest (or 1)
        return 0.0, max(1.05, float(score.max(initial=0.0)) * 1.05)
    positive = [float(v) for v in score if v > 0] + marks
    return 10 ** (np.floor(np.log10(min(positive))) - 0.5), 10 ** (np.ceil(np.log10(max(positive))) + 0.5)


def threshold_sweeps(table: CriteriaTable, points: int = 200) -> tuple[ThresholdSweep, ...]:
    """For every criterion of ``table``: the active count at ``points`` thresholds over its range
    (a decade beyond its values and its usual thresholds; linear from 0 for mean sigma^2)."""
    sweeps = []
    for key, values in table.values.items():
        c = CRITERIA[key]
        score = c.score(values)
        usual = tuple(r for r in table.rules if r.criterion == key)
        log_scale = c.active_above
        low, high = _sweep_range(score, [r.threshold for r in usual], log_scale)
        grid = np.geomspace(low, high, points) if log_scale else np.linspace(low, high, points)
        counts = np.array([c.is_active(score, t).sum() for t in grid])
        sweeps.append(ThresholdSweep(key, grid, counts, usual, log_scale))
    return tuple(sweeps)
