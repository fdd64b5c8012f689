"""Report sections about one model, shared by ``vaescope inspect`` and ``vaescope reproduce``.

Each function takes measured data (from :mod:`vaescope.measures.statistics` and :mod:`vaescope.experiments`)
and returns report blocks or a :class:`~vaescope.reports.html.Section`; none computes a statistic.
Figures are drawn by :mod:`vaescope.reports.figures` and handed to ``sink(figure, name, caption)``, which
saves the PNG and returns the :class:`~vaescope.reports.html.Image` block (``Context.figure`` in
``reproduce``, :func:`figure_sink` for a plain folder). ``label`` names the model in captions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from vaescope.measures.criteria import CriteriaTable, ThresholdSweep
from vaescope.measures.effects import VariableEffects
from vaescope.measures.gains import ReconstructionGain
from vaescope.measures.generation import GenerationCheck
from vaescope.measures.lesson import Lesson
from vaescope.measures.statistics import LatentStatistics
from vaescope.measures.trace import VarianceTrace
from vaescope.measures.variance_law import VarianceLaw
from vaescope.models.adapters import variable_position
from vaescope.reports.figures import sparsity as figs
from vaescope.reports.figures.common import save_png
from vaescope.reports.figures.criteria import criteria_figure
from vaescope.reports.html import Block, Image, Paragraph, Section, Table

FigureSink = Callable[[Figure, str, str], Image]


def figure_sink(out_dir: str, folder: str = "figures") -> FigureSink:
    """A sink that saves ``<out_dir>/<folder>/<name>.png`` and returns its block."""
    def sink(fig: Figure, name: str, caption: str = "") -> Image:
        relative = f"{folder}/{name}.png"
        save_png(fig, f"{out_dir}/{relative}")
        return Image(relative, caption)
    return sink


def _e(x: float) -> str:
    return f"{x:.3e}"


def _g(x: float) -> str:
    return f"{x:.4g}"


def _mark(flag: bool) -> str:
    return "inactive" if flag else "."


# ---------------------------------------------------------------------------- Table 1

def criteria_counts(stats: LatentStatistics) -> str:
    """One sentence: how many variables each activity criterion calls inactive."""
    t = stats.thresholds
    return (f"Var(mu) < {t.mu_variance_threshold:g} (the verdict): {stats.inactive_count}; mean sigma^2 > "
            f"{t.sigma2_threshold:g}: {int(stats.inactive_by_sigma2.sum())}; mean KL < {t.kl_threshold:g} nats: "
            f"{int(stats.inactive_by_kl.sum())}")


def table1_table(stats: LatentStatistics, caption: str, latent_shape: tuple[int, ...] | None = None) -> Table:
    """Table 1 of A. Asperti's "Sparsity in Variational Autoencoders", one row per variable, with
    the verdict of every activity criterion (``inactive`` where it calls the variable inactive)."""
    t = stats.thresholds
    rows = [[variable_position(j, latent_shape), _e(float(stats.mu_variance[j])), _e(float(stats.sigma2_mean[j])),
             f"{stats.variance_law[j]:.4f}", f"{stats.kl_mean[j]:.4f}",
             _mark(not stats.active[j]), _mark(bool(stats.inactive_by_sigma2[j])), _mark(bool(stats.inactive_by_kl[j])),
             "active" if stats.active[j] else "INACTIVE"] for j in range(stats.latent_dim)]
    return Table(["variable", "Var(mu)", "mean sigma^2", "Var(mu) + mean sigma^2", "mean KL (nats)",
                  f"Var(mu) < {t.mu_variance_threshold:g}", f"mean sigma^2 > {t.sigma2_threshold:g}",
                  f"KL < {t.kl_threshold:g}", "verdict"], rows,
                 highlight=frozenset(int(j) for j in np.flatnonzero(~stats.active)), caption=caption)


def table1_section(stats: LatentStatistics, label: str, latent_shape: tuple[int, ...] | None = None) -> Section:
    caption = (f"{label}: {stats.inactive_count} of {stats.latent_dim} variables inactive over {stats.n} images. "
               f"Inactive by each criterion: {criteria_counts(stats)}.")
    return Section("table1", "Table 1: every latent variable", [
        Paragraph("Per variable over the data: the variance of the encoder's mean, the mean posterior variance, "
                  "their sum (the variance law says ~1), the mean KL from the prior, and the verdict of each "
                  "activity criterion. The verdict is Var(mu) below its threshold (Burda et al.); rows it calls "
                  "inactive are highlighted."),
        table1_table(stats, caption, latent_shape)])


def channels_section(rows: Sequence[Mapping[str, float | int]]) -> Section:
    """Per-channel summary of a latent map ``(C, h, w)``: rows from :func:`vaescope.inspection.channel_summary`."""
    table = Table(["channel", "variables", "active", "mean Var(mu)", "mean sigma^2", "mean KL (nats)",
                   "summed gain (nats / image)"],
                  [[str(r["channel"]), str(r["variables"]), str(r["active"]), _e(float(r["mu_variance_mean"])),
                    _e(float(r["sigma2_mean_mean"])), f"{float(r['kl_mean_mean']):.4f}",
                    "-" if r.get("gain_sum") is None else _g(float(r["gain_sum"]))] for r in rows],
                  highlight=frozenset(i for i, r in enumerate(rows) if int(r["active"]) == 0),
                  caption="Channels with no active variable are highlighted.")
    return Section("channels", "Per channel", [
        Paragraph("The latents are a map: each element is a variable (named channel,row,column above). Per "
                  "channel, the number of active elements and the means of their statistics."), table])


def criteria_section(table: CriteriaTable, sweeps: Sequence[ThresholdSweep], sink: FigureSink, label: str,
                     mi_note: str = "") -> Section:
    """Every activity criterion's threshold swept, the usual rules' counts, and where they disagree
    (from :mod:`vaescope.measures.criteria`); ``mi_note`` says over what I(x; z_j) was estimated."""
    image = sink(criteria_figure(table, sweeps, label), "criteria",
                 "Active variables as each criterion's threshold sweeps its range (usual thresholds marked), and "
                 "the variables on which the rules disagree.")
    counts = table.polarisation_counts()
    rules = Table(["rule", "source", "active"], [[r.label, r.source, str(table.active_count(r))] for r in table.rules],
                  caption=f"{label}: clearly on {counts['on']}, clearly off {counts['off']}, in between "
                          f"{counts['between']} (every rule agreeing with a margin of {table.margin:.2g}x).")
    return Section("criteria", "Activity criteria side by side", [
        Paragraph("Which variables are active depends on the criterion and its threshold: Var(mu), mean sigma^2, "
                  "mean KL, the information I(x; z_j) and the reconstruction gain relative to the largest. "
                  + mi_note), image, rules])


# ---------------------------------------------------------------------------- trace

def trace_section(trace: VarianceTrace, sink: FigureSink, label: str, source: str) -> Section:
    """Var(mu_j) and mean sigma_j^2 along training, from a recorded trace (``source`` says where)."""
    fig = figs.variance_trace_figure(trace, label)
    for ax in fig.axes:
        ax.set_xlabel("training step")
    image = sink(fig, "variance_trace", "Var(mu_j) (left) and mean sigma_j^2 (right) of every variable along "
                 "training, on the recorded probe; red: inactive at the last point.")
    settled = trace.collapse_minibatch[~trace.final_active]
    text = (f"{len(trace.minibatches)} points from step {int(trace.minibatches[0])} to "
            f"{int(trace.minibatches[-1])}; {int((~trace.final_active).sum())} of {len(trace.final_active)} variables "
            f"are inactive at the last point (Var(mu) < {trace.threshold:g})")
    if len(settled) and settled.min() >= 0:
        text += f", below the threshold for good from step {int(settled.min())} to {int(settled.max())}"
    return Section("variance-trace", "Variance of the latent variables along training", [
        Paragraph(f"Recorded during training ({source}), as in Figure 1 of A. Asperti's \"Sparsity in "
                  "Variational Autoencoders\"."), image, Paragraph(text + ".")])


# ---------------------------------------------------------------------------- reconstruction gain

def gain_summary_row(label: str, gain: np.ndarray, active: np.ndarray) -> list[str]:
    """``[label, max |gain| inactive, min gain active, max gain active]``."""
    inactive = gain[~active]
    return [label, _g(float(np.abs(inactive).max())) if len(inactive) else "-",
            _g(float(gain[active].min())) if active.any() else "-", _g(float(gain[active].max())) if active.any() else "-"]


def gain_table(gain: ReconstructionGain, active: np.ndarray, caption: str,
               latent_shape: tuple[int, ...] | None = None) -> Table:
    return Table(["variable", "gain (nats / image)", "verdict"],
                 [[variable_position(int(j), latent_shape), _g(float(g)), "active" if active[j] else "INACTIVE"]
                  for j, g in zip(gain.variables, gain.gain)],
                 highlight=frozenset(k for k, j in enumerate(gain.variables) if not active[j]), caption=caption)


GAIN_TEXT = ("The gain of variable j: the mean reconstruction error -log p(x | code) (nats per example; the code is "
             "mu) with mu_j set to 0 minus the error with nothing zeroed. The decoder ignores a variable whose gain "
             "is ~0.")


def reconstruction_gain_section(gain: ReconstructionGain, active: np.ndarray, sink: FigureSink, label: str,
                                latent_shape: tuple[int, ...] | None = None) -> Section:
    active = np.asarray(active, dtype=bool)
    image = sink(figs.reconstruction_gain_figure({label: (gain.gain, active[gain.variables])}), "reconstruction_gain",
                 "Reconstruction error with mu_j set to 0 minus the error with nothing zeroed, log scale; a triangle "
                 "marks a gain below 1e-5 (zero, or slightly negative).")
    return Section("reconstruction-gain", "Reconstruction gain per variable", [
        Paragraph(GAIN_TEXT + f" Likelihood: {gain.likelihood}. Baseline error: {gain.baseline_error:.4g} nats per "
                  "example."), image,
        Table(["model", "max |gain|, inactive", "min gain, active", "max gain, active"],
              [gain_summary_row(label, gain.gain, active[gain.variables])], caption="Gains in nats per image."),
        gain_table(gain, active, f"{label}.", latent_shape)])


# ---------------------------------------------------------------------------- generation

GENERATION_TEXT = (
    "To make \"indistinguishable\" checkable: over {n} normal samples, the mean absolute difference of the decoded "
    "pixel means (sigmoid of the logits, in [0, 1]) caused by zeroing the inactive variables, against the control "
    "of zeroing as many active variables (all of them when fewer are active). The control zeroes the active "
    "variables with the lowest mean KL, the least informative ones, so it is the smallest effect that many active "
    "variables could have. Beside it: zeroing only the single lowest-KL active variable, and the mean over random "
    "choices of active variables (shown only when there is a choice).")


def generation_row(label: str, check: GenerationCheck) -> list[str]:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2e}"
    return [label, str(len(check.inactive)), cell(check.inactive_zeroed_mean_abs_diff),
            f"{cell(check.active_zeroed_mean_abs_diff)} ({len(check.control)} zeroed)",
            cell(check.single_active_zeroed_mean_abs_diff), cell(check.active_zeroed_random_mean_abs_diff)]


def generation_table(checks: Mapping[str, GenerationCheck]) -> Table:
    return Table(["model", "inactive", "inactive zeroed", "control: lowest-KL active zeroed",
                  "one lowest-KL active zeroed", "random active zeroed (mean)"],
                 [generation_row(label, check) for label, check in checks.items()],
                 caption="Mean absolute pixel difference.")


def generation_section(check: GenerationCheck, full: np.ndarray, zeroed: np.ndarray, sink: FigureSink,
                       label: str) -> Section:
    """``full``, ``zeroed``: the figure's two rows of images ``(n, C, H, W)`` in [0, 1]."""
    blocks: list[Block] = []
    if full.ndim == 4:  # images: the rows can be drawn
        blocks.append(sink(figs.generation_figure(full, zeroed, len(check.inactive)), "generation",
                           f"Top: decoded from {len(full)} normal samples of all variables ({label}). Bottom: the "
                           "same samples with the inactive variables set to 0."))
    blocks += [Paragraph(GENERATION_TEXT.format(n=check.n_samples) + f" Means of the likelihood: {check.likelihood}."),
               generation_table({label: check})]
    return Section("generation", "Generation with the inactive variables zeroed", blocks)


# ---------------------------------------------------------------------------- variance law

def law_row(label: str, law: VarianceLaw) -> list[str]:
    return [label, f"{law.max_abs_deviation:.3f}", f"{float(law.jensen_gap.max()):.3f}"]


def variance_law_section(law: VarianceLaw, sink: FigureSink, label: str,
                         latent_shape: tuple[int, ...] | None = None) -> Section:
    law_image = sink(figs.variance_law_figure({label: law}), "variance_law",
                     "Var(mu_j) (coloured by verdict) stacked under mean sigma_j^2, per variable; the law says the "
                     "sum is 1.")
    log_image = sink(figs.log_variance_figure({label: law}), "log_variance",
                     "mean(log sigma^2) against log(mean sigma^2) per variable: the derivation replaces the first by "
                     "the second; Jensen's inequality puts points on or below the diagonal.")
    rows = [[variable_position(j, latent_shape), _e(float(law.mu_variance[j])), _e(float(law.sigma2_mean[j])),
             f"{law.law[j]:.4f}", f"{law.deviation[j]:+.4f}", f"{law.jensen_gap[j]:.4f}"] for j in range(len(law.law))]
    return Section("variance-law", "The variance law Var(mu) + mean sigma^2 = 1", [
        Paragraph("The stationary condition of A. Asperti's \"A stationary condition for Variational Autoencoders\", "
                  "eq. (3): for every variable, active or inactive, the variance of its mean over the data plus its "
                  f"mean posterior variance is about 1. Here the largest |sum - 1| is {law.max_abs_deviation:.3f}."),
        law_image,
        Table(["variable", "Var(mu)", "mean sigma^2", "sum", "sum - 1", "log(mean s2) - mean(log s2)"], rows,
              highlight=frozenset(int(j) for j in np.flatnonzero(~law.active)),
              caption=f"{label}; the last column is the gap of the derivation's approximation (>= 0)."),
        log_image])


# ---------------------------------------------------------------------------- data that are not images

def effects_section(effects: VariableEffects, active: np.ndarray, label: str,
                    latent_shape: tuple[int, ...] | None = None) -> Section:
    """What each variable does to the decoded data (:mod:`vaescope.measures.effects`), one row per variable."""
    active = np.asarray(active, dtype=bool)
    tokens = effects.kind == "token-distribution"
    what = ("the mean total variation distance between the token distributions at each position"
            if tokens else "the mean absolute change of the decoded means over the elements")
    listed = "tokens whose probability rises most" if tokens else "elements that move most (signed change)"
    rows = [[variable_position(j, latent_shape), "active" if active[j] else "INACTIVE", f"{effects.effect[j]:.4g}",
             ", ".join(f"{int(i)} ({c:+.3g})" for i, c in zip(effects.top[j], effects.top_change[j]))]
            for j in range(len(effects.effect))]
    return Section("variable-effects", "What each variable does to the decoded data", [
        Paragraph(f"From the mean code, each variable is moved {effects.amplitude:g} prior standard deviations down "
                  f"and up, the others kept; the effect is {what} between the two decoded codes (likelihood: "
                  f"{effects.likelihood}). A variable the decoder ignores has effect 0."),
        Table(["variable", "verdict", "effect", listed], rows,
              highlight=frozenset(int(j) for j in np.flatnonzero(~active)), caption=f"{label}.")])


def lesson_section(learned: Lesson) -> Section:
    """The statements of :func:`vaescope.measures.lesson.lesson`, one paragraph each."""
    return Section("lesson", "What this means", [Paragraph(s.text) for s in learned.statements])
