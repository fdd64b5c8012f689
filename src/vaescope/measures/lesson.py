"""The lesson, said plainly: what a model's latent statistics mean for it, as A. Asperti's articles read them.

:func:`lesson` is a pure function of :class:`~vaescope.measures.statistics.LatentStatistics` (and, when
known, the KL weight beta, how far a KL warm-up has gone, and the full criteria table). It returns
statements, each with the numbers behind it and the threshold it was read against:

- **some variables inactive** (Var(mu) below its threshold): the latent space is larger than the model
  uses; ``vaescope prune`` gives the smaller model with the same outputs;
- **none inactive**: the model may be using all the latent space it has; a sweep over the latent size
  tells whether it would use more;
- **the variance law** Var(mu) + mean sigma^2 = 1 (A. Asperti, "A stationary condition for Variational
  Autoencoders"): a largest deviation above :data:`LAW_TOLERANCE` means the training has not converged,
  or the KL term is weighted (beta != 1, or a KL warm-up still under way); within it, the model is at the
  stationary point the articles describe;
- **variables in between**: not clearly on nor clearly off by every criterion with half a decade to
  spare (:mod:`vaescope.measures.criteria`): their verdict depends on the threshold.

Used at the end of ``vaescope stats``, ``vaescope inspect``, :meth:`vaescope.LatentMonitor.summary` and
the sweep report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vaescope.measures.criteria import CriteriaTable, criteria_table
from vaescope.measures.statistics import LatentStatistics

# The largest |Var(mu_j) + mean sigma_j^2 - 1| read as "the law holds". A converged dense16 on MNIST
# stays at ~0.07-0.13 (DESIGN.md, measured); after one epoch it is ~1.1.
LAW_TOLERANCE = 0.2


@dataclass(frozen=True)
class Statement:
    """One thing the numbers say: ``key`` (``inactive``, ``all-active``, ``law-holds``, ``law-off``,
    ``between``), the sentence, and the numbers and thresholds it states."""

    key: str
    text: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "text": self.text, "numbers": self.numbers}


@dataclass(frozen=True)
class Lesson:
    statements: tuple[Statement, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.statements)

    def text(self) -> str:
        """The statements as one paragraph, headed "What this means"."""
        return "What this means: " + " ".join(s.text for s in self.statements)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text(), "statements": [s.to_dict() for s in self.statements]}


def _list(indices: list[int], most: int = 12) -> str:
    shown = ", ".join(map(str, indices[:most]))
    return shown + (f", ... ({len(indices)} in all)" if len(indices) > most else "")


def _activity(stats: LatentStatistics) -> Statement:
    t = stats.thresholds.mu_variance_threshold
    d, k = stats.latent_dim, stats.inactive_count
    if k:
        inactive = [int(j) for j in range(d) if not stats.active[j]]
        largest = float(stats.mu_variance[~stats.active].max())
        return Statement("inactive", (
            f"{k} of {d} latent variables are inactive (Var(mu) < {t:g}; the largest among them is {largest:.3g}): "
            f"variables {_list(inactive)}. The latent space is larger than the model uses; `vaescope prune` gives "
            f"the smaller model of {d - k} variables with the same outputs."),
            {"inactive": k, "latent_dim": d, "threshold": t, "largest_inactive_mu_variance": largest,
             "variables": inactive})
    smallest = float(stats.mu_variance.min())
    return Statement("all-active", (
        f"All {d} latent variables are active (the smallest Var(mu) is {smallest:.3g} >= {t:g}): the model may be "
        f"using all the latent space it has; a sweep over the latent size (`vaescope sweep --grid "
        f"model.latent_dim=...`) tells whether it would use more."),
        {"inactive": 0, "latent_dim": d, "threshold": t, "smallest_mu_variance": smallest})


def _law(stats: LatentStatistics, beta: float | None, warmup: float | None, tolerance: float) -> Statement:
    dev = stats.variance_law_max_abs_dev
    worst = int(abs(stats.variance_law - 1.0).argmax())
    numbers: dict[str, Any] = {"max_abs_deviation": dev, "variable": worst, "tolerance": tolerance,
                               "beta": beta, "warmup": warmup}
    measured = (f"the largest |Var(mu) + mean sigma^2 - 1| is {dev:.3g} (variable {worst}, sum "
                f"{float(stats.variance_law[worst]):.3g})")
    if dev <= tolerance:
        return Statement("law-holds", f"The variance law holds: {measured}, within {tolerance:g}, as at the "
                         "stationary point of a trained VAE.", numbers)
    if warmup is not None and warmup < 1.0:
        why = (f"a KL warm-up is still under way ({warmup:.0%} done, so the KL term is weighted below 1): "
               "train on past its end and measure again")
    elif beta is not None and beta != 1.0:
        why = f"the KL term is weighted (beta = {beta:g}, not 1)"
    elif beta is not None and warmup is not None:
        why = "the training has not converged (the KL weight is beta = 1, with no warm-up): train longer"
    elif beta is not None:
        why = "the training has not converged, or a KL warm-up is still under way (beta = 1)"
    else:
        why = ("the training has not converged, or the KL term is weighted (beta != 1, or a KL warm-up still "
               "under way)")
    return Statement("law-off", f"The variance law is far from 1: {measured}, above {tolerance:g}: {why}.", numbers)


def _between(table: CriteriaTable) -> Statement | None:
    between = [int(j) for j in range(table.latent_dim) if table.polarisation[j] == "between"]
    if not between:
        return None
    rules = ", ".join(r.label for r in table.rules)
    return Statement("between", (
        f"{len(between)} variable(s) are in between ({_list(between)}): not clearly on nor off by every rule "
        f"({rules}) with a margin of {table.margin:.2g}x, so their verdict depends on the threshold; more training "
        "or their reconstruction gain decides."),
        {"variables": between, "margin": table.margin, "rules": [r.key for r in table.rules]})


def lesson(stats: LatentStatistics, *, beta: float | None = None, warmup: float | None = None,
           criteria: CriteriaTable | None = None, law_tolerance: float = LAW_TOLERANCE) -> Lesson:
    """What ``stats`` mean for the model (see the module docstring).

    ``beta``: the KL weight the model was trained with, when known. ``warmup``: the fraction of a KL
    warm-up done (1: none under way, e.g. vaescope's own training, which has none; None: not known). ``criteria``: the full criteria table (with I(x; z_j) and
    the gains) for the "in between" statement; default: the table of ``stats`` alone.
    """
    statements = [_activity(stats), _law(stats, beta, warmup, law_tolerance)]
    between = _between(criteria if criteria is not None else criteria_table(stats))
    if between is not None:
        statements.append(between)
    return Lesson(tuple(statements))


def sweep_lesson(rows: Sequence[Mapping[str, Any]], mu_variance_threshold: float = 0.01,
                 law_tolerance: float = LAW_TOLERANCE) -> Lesson:
    """The lesson of a sweep, from its rows (``sweep.json``: ``run``, ``latent_dim``, ``active_mu_variance``,
    ``variance_law_max_abs_dev``, and ``loss.beta`` when swept): which runs have inactive variables (their
    latent space is larger than they use), whether the sweep reached a latent size with some (else a larger
    one tells), and which runs are far from the variance law. Failed runs are left out."""
    done = [r for r in rows if r.get("status") != "failed"]
    if not done:
        return Lesson((Statement("no-runs", "No run of the sweep finished: nothing to read yet."),))
    spare = [r for r in done if int(r["active_mu_variance"]) < int(r["latent_dim"])]
    full = [r for r in done if int(r["active_mu_variance"]) >= int(r["latent_dim"])]
    sizes = sorted({int(r["latent_dim"]) for r in done})
    statements = []
    if spare:
        smallest = min(int(r["latent_dim"]) for r in spare)
        statements.append(Statement("inactive", (
            f"{len(spare)} of {len(done)} runs have inactive variables (Var(mu) < {mu_variance_threshold:g}), from "
            f"latent size {smallest} on: those latent spaces are larger than the models use; `vaescope prune RUN` "
            "gives each the smaller model with the same outputs."),
            {"runs": [r["run"] for r in spare], "smallest_latent_dim": smallest, "threshold": mu_variance_threshold}))
    if full:
        largest = max(int(r["latent_dim"]) for r in full)
        reached = any(int(r["latent_dim"]) > largest for r in spare)
        tail = ("; the larger latent sizes of the sweep leave variables inactive, so the models stop using more "
                "near there" if reached else
                f"; no latent size of the sweep ({', '.join(map(str, sizes))}) leaves a variable inactive, so a sweep "
                "over larger ones tells whether the models would use more")
        statements.append(Statement("all-active", (
            f"{len(full)} of {len(done)} runs use every variable (up to latent size {largest}): they may be using all "
            f"the latent space they have" + tail + "."),
            {"runs": [r["run"] for r in full], "largest_latent_dim": largest, "reached": reached}))
    far = [r for r in done if float(r["variance_law_max_abs_dev"]) > law_tolerance]
    if far:
        worst = max(far, key=lambda r: float(r["variance_law_max_abs_dev"]))
        betas = sorted({float(r["loss.beta"]) for r in far if "loss.beta" in r})
        weighted = [b for b in betas if b != 1.0]
        why = (f"the KL term is weighted (beta = {', '.join(f'{b:g}' for b in weighted)})" if weighted else
               "the training has not converged (vaescope trains with beta = 1 unless swept, and no warm-up): "
               "train longer")
        statements.append(Statement("law-off", (
            f"{len(far)} of {len(done)} runs are far from the variance law (the largest |Var(mu) + mean sigma^2 - 1| "
            f"above {law_tolerance:g}; at most {float(worst['variance_law_max_abs_dev']):.3g}, run {worst['run']}): "
            f"{why}."), {"runs": [r["run"] for r in far], "tolerance": law_tolerance}))
    else:
        top = max(float(r["variance_law_max_abs_dev"]) for r in done)
        statements.append(Statement("law-holds", (
            f"Every run obeys the variance law within {law_tolerance:g} (the largest deviation is {top:.3g})."),
            {"max_abs_deviation": top, "tolerance": law_tolerance}))
    return Lesson(tuple(statements))
