"""Plain-text tables for the terminal (data in, text out)."""

from __future__ import annotations

from .stats import LatentStatistics


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
