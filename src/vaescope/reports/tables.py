"""Plain-text tables for the terminal (data in, text out)."""

from __future__ import annotations

from vaescope.measures.bound import ImportanceWeightedBound
from vaescope.measures.criteria import CriteriaTable, Rule
from vaescope.measures.information import MutualInformation
from vaescope.measures.statistics import LatentStatistics


def latent_table(stats: LatentStatistics, title: str | None = None) -> str:
    """The articles' "Table 1": one row per variable, inactive rows marked.

    Columns: Var(mu) and mean sigma^2 as in the sparsity article, then their sum (the variance law), the
    mean KL, and the verdicts of the three activity criteria (``x`` = inactive by that criterion).
    """
    t = stats.thresholds
    lines = []
    if title:
        lines.append(title)
    header = (f"{'var':>3}  {'Var(mu)':>11}  {'mean s2':>11}  {'law':>7}  {'KL':>8}  "
              f"{'mu_mean':>8}   verdict   s2>{t.sigma2_threshold:g} KL<{t.kl_threshold:g}")
    lines.append(header)
    lines.append("-" * len(header))
    for j in range(stats.latent_dim):
        active = bool(stats.active[j])
        lines.append(
            f"{j:>3}  {stats.mu_variance[j]:>11.4e}  {stats.sigma2_mean[j]:>11.4e}  "
            f"{stats.variance_law[j]:>7.4f}  {stats.kl_mean[j]:>8.4f}  {stats.mu_mean[j]:>8.4f}   "
            f"{'active  ' if active else 'INACTIVE'}   "
            f"{'x' if stats.inactive_by_sigma2[j] else '.':^6} {'x' if stats.inactive_by_kl[j] else '.':^7}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"{stats.inactive_count} of {stats.latent_dim} variables inactive "
        f"(Var(mu) < {t.mu_variance_threshold:g}); by mean s2 > {t.sigma2_threshold:g}: "
        f"{int(stats.inactive_by_sigma2.sum())}; by KL < {t.kl_threshold:g}: {int(stats.inactive_by_kl.sum())}"
    )
    lines.append(
        f"variance law Var(mu) + mean s2: max |law - 1| = {stats.variance_law_max_abs_dev:.4f} over {stats.n} points"
    )
    return "\n".join(lines)


_SHORT = {"mu_variance": "Var", "sigma2_mean": "s2", "kl_mean": "KL", "mi": "MI", "reconstruction_gain": "gain"}


def _inactive_label(rule: Rule) -> str:
    """``KL < 0.1 (NVAE)``, ``gain < 1% of largest``: short, for the summary line."""
    if rule.criterion == "reconstruction_gain":
        return f"gain < {rule.threshold:.0%} of largest"
    name = {"sigma2_mean": "mean s2", "kl_mean": "KL", "mi": "I(x;zj)"}.get(rule.criterion, rule.criterion)
    sign = ">" if rule.criterion == "sigma2_mean" else "<"
    return f"{name} {sign} {rule.threshold:g}" + (" (NVAE)" if rule.source == "NVAE" else "")


def criteria_text(stats: LatentStatistics, table: CriteriaTable, mi: MutualInformation | None = None,
                  bound: ImportanceWeightedBound | None = None, title: str | None = None) -> str:
    """Table 1 with every activity criterion side by side, one row per variable, then the inactive
    counts by rule, the polarised picture, the disagreements, and the information measures when given.

    Columns: Var(mu), mean sigma^2, their sum (the variance law), KL, I(x; z_j) (``-`` without
    ``--mi``), the verdict (Var(mu), Burda et al.), the reconstruction gain, a flag per other rule
    (``x`` = inactive by it, ``.`` = active), and the class: on, off or between (:mod:`vaescope.measures.criteria`).
    """
    lines = [title] if title else []
    values = table.values
    others = [r for r in table.rules if r.criterion != "mu_variance"]
    flags = "".join(f"{_SHORT[r.criterion]:>5}" for r in others)
    marks = "".join(f"{r.threshold:>5.0%}" if r.criterion == "reconstruction_gain" else f"{r.threshold:>5g}"
                    for r in others)
    header = (f"{'var':>3}  {'Var(mu)':>11}  {'mean s2':>8}  {'law':>6}  {'KL':>7}  {'I(x;zj)':>7}  "
              f"{'verdict':<8}  {'gain':>9} {flags}  class")
    lines += [header, f"{'':>3}  {'':>11}  {'':>8}  {'':>6}  {'nats':>7}  {'nats':>7}  {'':<8}  {'nats':>9} {marks}",
              "-" * len(header)]
    for j in range(table.latent_dim):
        information = f"{values['mi'][j]:>7.4f}" if "mi" in values else f"{'-':>7}"
        gain = f"{values['reconstruction_gain'][j]:>9.3g}" if "reconstruction_gain" in values else f"{'-':>9}"
        verdicts = "".join(f"{'.' if table.verdicts[r.key][j] else 'x':>5}" for r in others)
        lines.append(f"{j:>3}  {stats.mu_variance[j]:>11.4e}  {stats.sigma2_mean[j]:>8.4f}  "
                     f"{stats.variance_law[j]:>6.3f}  {stats.kl_mean[j]:>7.4f}  {information}  "
                     f"{'active' if stats.active[j] else 'INACTIVE':<8}  {gain} {verdicts}  {table.polarisation[j]}")
    lines.append("-" * len(header))
    by_rule = "; ".join(f"by {_inactive_label(r)}: {table.latent_dim - table.active_count(r)}" for r in others)
    lines.append(f"{stats.inactive_count} of {stats.latent_dim} variables inactive "
                 f"(Var(mu) < {stats.thresholds.mu_variance_threshold:g}); {by_rule}")
    p = table.polarisation_counts()
    lines.append(f"polarised: {p['on']} clearly on, {p['off']} clearly off, {p['between']} in between "
                 f"(on or off: every rule agrees with a factor {table.margin:.2g} to spare)")
    disagree = table.disagreements
    lines.append("the rules disagree on variable(s) " + ", ".join(map(str, disagree)) if len(disagree)
                 else "every rule agrees on every variable")
    lines.append(f"variance law Var(mu) + mean s2: max |law - 1| = {stats.variance_law_max_abs_dev:.4f} "
                 f"over {stats.n} points")
    if mi is not None:
        lines.append(mutual_information_text(mi))
    if bound is not None:
        lines.append(bound_text(bound))
    return "\n".join(lines)


def mutual_information_text(mi: MutualInformation) -> str:
    """I(x; z) with its ceiling log N, and the sum of the per-variable values."""
    near = mi.log_n - mi.joint < 0.5
    over = (f"a random subsample of {mi.n} of {mi.total} examples (seed {mi.subsample_seed})" if mi.subsampled
            else f"{mi.n} examples")
    return (f"I(x; z) = {mi.joint:.3f} nats (standard error {mi.joint_standard_error:.3f}) over {over}, "
            f"{mi.samples} code(s) each (He et al. 2019); the estimate cannot exceed log N = {mi.log_n:.2f}"
            f"{': it is at its ceiling, the true value may be larger' if near else ''}; "
            f"sum of I(x; z_j) = {mi.per_variable_sum:.3f} nats ({mi.seconds:.1f} s)")


def bound_text(bound: ImportanceWeightedBound) -> str:
    """The importance-weighted bound for each K, and which images and likelihood it comes from."""
    parts = ", ".join(f"K={k}: {b:.2f} (+-{se:.2f})" for k, b, se in zip(bound.ks, bound.bounds, bound.standard_errors))
    source = (f"data.binarize = {bound.binarize!r}" if bound.binarize != "none" or bound.likelihood != "bernoulli"
              else "data.binarize = 'none': the Bernoulli likelihood of grey levels, not comparable with the "
                   "binarised-MNIST literature")
    likelihood = bound.likelihood_description or f"{bound.likelihood} decoder"
    return (f"log p(x) >= (importance-weighted bound, Burda et al. 2016, nats per example, {bound.n} examples, "
            f"likelihood: {likelihood}) {parts}; {source} ({bound.seconds:.1f} s)")
