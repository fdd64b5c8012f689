"""The static experiments of ``vaescope reproduce``: sparsity and the variance law.

Steps, in order: train or reuse dense16, dense16_no_kl and conv16 for every seed; the variance
along training; Table 1 for both nets; generation with inactive variables zeroed; the
reconstruction gain per variable; the variance law and the stationary condition; sparsity without
the KL term; run-to-run variation. Each step reads runs from the :class:`Context`, calls the pure
functions of :mod:`vaescope.experiments`, and adds numbers, figures and a report section; the
per-model tables and texts (Table 1, gains, generation) come from :mod:`vaescope.reports.sections`, which
``vaescope inspect`` uses too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vaescope.experiments.run_to_run import count_spread
from vaescope.experiments.sparsity_table import ARTICLE_INACTIVE_COUNTS, ARTICLE_LATENT_DIM, article_comparison
from vaescope.measures.gains import reconstruction_gain
from vaescope.measures.generation import generation_check, generation_rows
from vaescope.measures.trace import variance_trace
from vaescope.measures.variance_law import stationary_curves, variance_law
from vaescope.reports.figures import sparsity as figs
from vaescope.reports.html import Paragraph, Section, Table
from vaescope.reports.sections import (
    GENERATION_TEXT,
    criteria_counts,
    gain_summary_row,
    gain_table,
    generation_table,
    table1_table,
)
from vaescope.reports.text import architecture
from vaescope.reproduce.context import Context, PlannedRun, Settings, Step, TrainedRun

MODELS: tuple[str, ...] = ("dense16", "dense16_no_kl", "conv16")
MODEL_LABELS = {"dense16": "dense16", "conv16": "conv16",
                "dense16_no_kl": "dense16 without the KL term (quadratic penalty on mu, no sampling)"}
SPARSE_MODELS: tuple[str, ...] = ("dense16", "conv16")  # the two VAEs of the sparsity article's Table 1


def steps(settings: Settings) -> list[Step]:
    return [
        Step("train", "train or reuse every run the steps read, together (dense16, dense16_no_kl and conv16 "
                      "for every seed, and the dynamic experiments' models)", train_models, runs=static_runs),
        Step("variance-trace", "variance of each variable along training", variance_along_training),
        Step("table1", "Table 1: per-variable statistics of the dense and conv nets", table1),
        Step("generation", "generation with inactive variables zeroed", generation),
        Step("reconstruction-gain", "reconstruction gain per variable", reconstruction_gains),
        Step("variance-law", "variance law and stationary condition", variance_law_step),
        Step("no-kl", "sparsity without the KL term", no_kl),
        Step("run-to-run", "run-to-run variation and summary", run_to_run),
    ]


def _first(ctx: Context, model: str) -> TrainedRun:
    return ctx.trained(model, ctx.seeds[0])


# ---------------------------------------------------------------------------- steps

def _arch(tr: TrainedRun) -> str:
    return architecture(tr.run.config, tr.run.image_shape)


def static_runs(ctx: Context) -> list[PlannedRun]:
    return [PlannedRun(model, seed) for model in MODELS for seed in ctx.seeds]


def train_models(ctx: Context) -> None:
    ctx.train_together(ctx.planned or static_runs(ctx))
    ctx.results["models"] = {model: ctx.model_runs(model).to_dict(ARTICLE_INACTIVE_COUNTS.get(model))
                             for model in MODELS}


def variance_along_training(ctx: Context) -> None:
    tr = _first(ctx, "dense16")
    data = variance_trace(tr.trace, tr.run.config.stats.mu_variance_threshold)
    ctx.results["variance_trace"] = {"dense16": data.to_dict()}
    image = ctx.figure(figs.variance_trace_figure(data, f"dense16, seed {tr.seed}"), "variance_trace",
                       f"Var(mu_j) (left) and mean sigma_j^2 (right) of the {tr.stats.latent_dim} variables of the "
                       "dense net "
                       "along training, on the first "
                       f"{tr.run.config.train.trace_subset} test images; red: inactive at the end.")
    settled = data.collapse_minibatch[~data.final_active]
    text = (f"The variance of {int((~data.final_active).sum())} of {len(data.final_active)} variables falls "
            "to about 0 while their mean posterior variance rises to about 1. "
            + (f"They settle below the threshold {data.threshold:g} for good between minibatch "
               f"{int(settled.min())} and {int(settled.max())} of {int(data.minibatches[-1])}."
               if len(settled) and settled.min() >= 0 else ""))
    ctx.sections.append(Section("variance-trace", "Variance of the latent variables along training", [
        Paragraph(f"As in Figure 1 of the sparsity article: the dense {_arch(tr)} VAE, Var(mu_j) over held-out "
                  f"images against the number of minibatches of {tr.run.config.train.batch_size} images, recorded "
                  "during training."),
        image, Paragraph(text)]))


def _table(tr: TrainedRun, model: str) -> Table:
    cmp = article_comparison(model, tr.stats.inactive_count, tr.stats.latent_dim)
    article_note = f"; the sparsity article reports {cmp.article} of {ARTICLE_LATENT_DIM}" if cmp.article is not None else ""
    return table1_table(tr.stats, f"{model}, seed {tr.seed}: {tr.stats.inactive_count} of {tr.stats.latent_dim} "
                                  f"inactive{article_note}. Inactive by each criterion: {criteria_counts(tr.stats)}.")


def table1(ctx: Context) -> None:
    blocks: list[Any] = [Paragraph(
        "Per variable over the test set: Var(mu), mean sigma^2 and the verdict (inactive when Var(mu) < "
        f"{_first(ctx, 'dense16').run.config.stats.mu_variance_threshold:g}); inactive rows are highlighted.")]
    comparison = []
    for model in SPARSE_MODELS:
        tr = _first(ctx, model)
        blocks.append(_table(tr, model))
        comparison.append(article_comparison(model, tr.stats.inactive_count, tr.stats.latent_dim))
    counts = {m: ctx.model_runs(m).inactive_counts for m in SPARSE_MODELS}
    blocks.append(Table(["model", "inactive (ours, per random seed)", "inactive (sparsity article)", "latent variables"],
                        [[c.model, ", ".join(map(str, counts[c.model])), str(c.article), str(c.latent_dim)]
                         for c in comparison],
                        caption="Our counts beside the article's."))
    differing = [c.model for c in comparison
                 if c.article is not None and min(abs(n - c.article) for n in counts[c.model]) > 1]
    if differing:
        blocks.append(Paragraph(_difference_note(ctx, differing)))
    ctx.results["table1"] = {"comparison": [c.to_dict() for c in comparison]}
    ctx.sections.append(Section("table1", "Table 1: inactive variables of the dense and convolutional nets", blocks))


def _difference_note(ctx: Context, models: list[str]) -> str:
    parts = []
    for model in models:
        cfg = _first(ctx, model).run.config
        shape = (f"conv channels {list(cfg.model.conv_channels)}, dense {cfg.model.conv_dense}"
                 if cfg.model.kind == "conv" else "-".join(map(str, cfg.model.hidden)))
        parts.append(f"{model} ({shape}, {cfg.train.epochs} epochs)")
    return ("Where our count differs from the article's by more than one on every random seed: " + "; ".join(parts) + ". "
            "The sparsity article gives its convolutional net only as a picture and does not say how long it trained; ours "
            "is a small stand-in, and the quick mode trains it briefly. Variables with a small Var(mu) but above "
            "the threshold are visible in the table and in the reconstruction gains below.")


def generation(ctx: Context) -> None:
    n = ctx.settings.generation_samples
    per_model = {}
    for model in SPARSE_MODELS:
        tr = _first(ctx, model)
        ctx.generation[model] = generation_check(tr.run.model, tr.stats.active, tr.stats.kl_mean, n_samples=n,
                                                 seed=tr.seed)
        per_model[model] = ctx.generation[model].to_dict()
    dense = per_model["dense16"]
    ctx.results["generation"] = {
        "model": "dense16",
        "inactive_zeroed_mean_abs_diff": dense["inactive_zeroed_mean_abs_diff"],
        "active_zeroed_mean_abs_diff": dense["active_zeroed_mean_abs_diff"],
        "per_model": per_model,
    }
    tr = _first(ctx, "dense16")
    full, zeroed = generation_rows(tr.run.model, tr.stats.active, n=10, seed=tr.seed)
    image = ctx.figure(figs.generation_figure(full, zeroed, tr.stats.inactive_count), "generation",
                       f"Top: digits decoded from {len(full)} normal samples of all {tr.stats.latent_dim} variables "
                       "(dense16). "
                       "Bottom: the same samples with the inactive variables set to 0.")
    ctx.sections.append(Section("generation", "Generation with the inactive variables zeroed", [
        image,
        Paragraph(GENERATION_TEXT.format(n=n)),
        generation_table({m: ctx.generation[m] for m in SPARSE_MODELS}),
    ]))


def reconstruction_gains(ctx: Context) -> None:
    gains: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    results: dict[str, Any] = {}
    table_rows = []
    for model in SPARSE_MODELS:
        tr = _first(ctx, model)
        gain = reconstruction_gain(tr.run.model, ctx.dataset.x_test, tr.run.config.loss.reconstruction)
        ctx.gains[model] = gain
        gains[model] = (gain.gain, tr.stats.active)
        results[model] = gain.gain.tolist()
        results[f"{model}_baseline_error"] = gain.baseline_error
        for j, value in enumerate(gain.gain):
            table_rows.append((model, j, value, bool(tr.stats.active[j])))
    ctx.results["reconstruction_gain"] = results
    image = ctx.figure(figs.reconstruction_gain_figure(gains), "reconstruction_gain",
                       "Test-set reconstruction error with mu_j set to 0 minus the error with nothing zeroed, "
                       "log scale; a triangle marks a gain below 1e-5 (zero, or slightly negative).")
    summary = [gain_summary_row(model, gain, active) for model, (gain, active) in gains.items()]
    ctx.sections.append(Section("reconstruction-gain", "Reconstruction gain per variable", [
        Paragraph("The gain of variable j: the mean test-set reconstruction error (nats per image, the code is "
                  "mu) with mu_j set to 0 minus the error with nothing zeroed. Inactive variables should gain ~0."),
        image,
        Table(["model", "max |gain|, inactive", "min gain, active", "max gain, active"], summary,
              caption="Gains in nats per image."),
        gain_table(ctx.gains["dense16"], gains["dense16"][1], f"dense16, seed {ctx.seeds[0]}."),
    ]))


def variance_law_step(ctx: Context) -> None:
    laws = {model: variance_law(_first(ctx, model).stats) for model in SPARSE_MODELS}
    curves = stationary_curves()
    ctx.results["variance_law"] = {"stationary_check": curves.to_dict(),
                                   **{m: law.to_dict() for m, law in laws.items()}}
    law_image = ctx.figure(figs.variance_law_figure(laws), "variance_law",
                           "Var(mu_j) (coloured by verdict) stacked under mean sigma_j^2, per variable; "
                           "the law says the sum is 1.")
    log_image = ctx.figure(figs.log_variance_figure(laws), "log_variance",
                           "mean(log sigma^2) against log(mean sigma^2) per variable: the article replaces the "
                           "first by the second; Jensen's inequality puts points on or below the diagonal.")
    kl_image = ctx.figure(figs.stationary_kl_figure(curves), "stationary_kl",
                          "Eq. (1): KL as a function of sigma^2 at a fixed ratio rho^2 = sigma^2 / mu^2; dots "
                          "mark eq. (2), sigma^2 = rho^2 / (1 + rho^2).")
    per_seed = [[m, ", ".join(f"{v:.3f}" for v in ctx.model_runs(m).variance_law_deviations)]
                for m in SPARSE_MODELS]
    ctx.sections.append(Section("variance-law", "The variance law Var(mu) + mean sigma^2 = 1", [
        Paragraph("The stationary condition of A. Asperti's article (3): for every variable, active or inactive, the variance of "
                  "its mean over the data plus its mean posterior variance is about 1."),
        law_image,
        Table(["model", "max |Var(mu) + mean sigma^2 - 1| per seed"], per_seed),
        Paragraph("The derivation approximates mean(log sigma^2) by log(mean sigma^2). The gap is largest for "
                  "variables whose sigma^2 varies a lot across the data: "
                  + "; ".join(f"{m}: largest gap {float(law.jensen_gap.max()):.3f}" for m, law in laws.items())
                  + "."),
        log_image,
        Paragraph("The article's Figure 1 of the stationary-condition article, with a numerical check that the "
                  "curves' minimum lies where eq. (2) puts it (golden-section search on eq. (1), independent "
                  f"of eq. (2)); the largest error over the rhos is {curves.max_abs_error:.1e}."),
        kl_image,
        Table(["rho", "eq. (2): rho^2 / (1 + rho^2)", "numerical argmin", "argmin on the plotted grid"],
              [[f"{r:g}", f"{f:.6f}", f"{n:.6f}", f"{g:.4f}"] for r, f, n, g in
               zip(curves.rhos, curves.formula_minimiser, curves.numerical_minimiser, curves.grid_minimiser)]),
    ]))


def no_kl(ctx: Context) -> None:
    runs = [ctx.trained("dense16_no_kl", seed) for seed in ctx.seeds]
    tr, dense = runs[0], _first(ctx, "dense16")
    gain = reconstruction_gain(tr.run.model, ctx.dataset.x_test, tr.run.config.loss.reconstruction)
    dense_gain = (ctx.gains["dense16"] if "dense16" in ctx.gains else
                  reconstruction_gain(dense.run.model, ctx.dataset.x_test, dense.run.config.loss.reconstruction)).gain.tolist()
    used = int((gain.gain > 0.01 * gain.gain.max()).sum())
    dense_used = int((np.asarray(dense_gain) > 0.01 * max(dense_gain)).sum())
    ctx.results["no_kl"] = {
        "inactive_count": [r.stats.inactive_count for r in runs],
        "mu_variance_first_seed": tr.stats.mu_variance.tolist(),
        "reconstruction_gain_first_seed": gain.gain.tolist(),
        "used_by_decoder_first_seed": used,
        "dense16_used_by_decoder_first_seed": dense_used,
    }
    threshold = tr.run.config.stats.mu_variance_threshold
    image = ctx.figure(figs.no_kl_figure({"dense16 (VAE)": dense.stats.mu_variance,
                                          "dense16_no_kl (no sampling, mu^2/2 kept)": tr.stats.mu_variance},
                                         {"dense16 (VAE)": np.asarray(dense_gain),
                                          "dense16_no_kl (no sampling, mu^2/2 kept)": gain.gain}, threshold),
                       "no_kl", "Variables sorted high to low, for the VAE and for the same net trained without "
                       f"sampling (only the quadratic penalty on mu), seed {tr.seed}: Var(mu_j) (left) and "
                       "reconstruction gain (right).")
    counts = ", ".join(str(r.stats.inactive_count) for r in runs)
    vae_counts = ", ".join(str(ctx.trained("dense16", s).stats.inactive_count) for s in ctx.seeds)
    low, high = float(tr.stats.mu_variance.min()), float(tr.stats.mu_variance.max())
    ctx.sections.append(Section("no-kl", "Sparsity needs the KL term", [
        Paragraph("The dense net trained with z = mu (no sampling) and only the quadratic penalty mu^2/2 of the "
                  "KL kept. The sparsity article says sparsity disappears. Inactive counts (Var(mu) < "
                  f"{threshold:g}) per seed: **{counts}** of {tr.stats.latent_dim}, against {vae_counts} for the VAE."),
        Paragraph(f"Read the counts with care: without the sigma^2 terms of the KL nothing fixes the scale of the "
                  "code (the penalty mu^2/2 shrinks with it and the decoder can scale back up), so Var(mu) drifts "
                  f"down for all variables alike (here between {low:.3g} and {high:.3g} on seed {tr.seed}) and a "
                  "fixed threshold would eventually call every variable inactive. The decoder's use of a variable "
                  f"is scale-free: on seed {tr.seed}, {used} of {tr.stats.latent_dim} variables of the no-KL net "
                  f"have a reconstruction gain above 1% of the largest, against {dense_used} for the VAE."),
        image,
    ]))


def run_to_run(ctx: Context) -> None:
    runs = {m: ctx.model_runs(m) for m in MODELS}
    spreads = {m: count_spread(ctx.seeds, runs[m].inactive_counts) for m in MODELS}
    ctx.results["run_to_run"] = {m: s.to_dict() for m, s in spreads.items()}
    dim = _first(ctx, "dense16").stats.latent_dim
    image = ctx.figure(figs.run_to_run_figure(spreads, ARTICLE_INACTIVE_COUNTS, dim), "run_to_run",
                       "Inactive variables per random seed (dots) and the sparsity article's count (cross).")
    rows = [[m, str(runs[m].first.run.config.train.epochs), ", ".join(map(str, s.counts)), f"{s.minimum}-{s.maximum}",
             f"{s.mean:.2f}", f"{s.std:.2f}", str(ARTICLE_INACTIVE_COUNTS.get(m, "-"))] for m, s in spreads.items()]
    table = Table(["model", "epochs", "inactive per random seed", "range", "mean", "std", "sparsity article"], rows)
    ctx.sections.append(Section("run-to-run", "Run to run", [
        Paragraph(f"Every model trained with {len(ctx.seeds)} random seed(s); the sparsity article says the degree of sparsity "
                  "varies slightly from training to training."), image, table]))
    ctx.sections.insert(0, Section("summary", "Summary", [_summary(ctx), table]))


def _summary(ctx: Context) -> Paragraph:
    """The report's first words, each number read from the same runs as ``results.json``'s ``models``."""
    runs = {m: ctx.model_runs(m) for m in MODELS}
    g = ctx.generation["dense16"]

    def article(model: str) -> str:
        count = ARTICLE_INACTIVE_COUNTS.get(model)
        return f" (the sparsity article: {count} of {ARTICLE_LATENT_DIM})" if count is not None else ""

    counts = "; ".join(f"{MODEL_LABELS[m]} {runs[m].inactive_counts}{article(m)}" for m in MODELS)
    laws = ", ".join(f"{MODEL_LABELS[m]} {[round(v, 3) for v in runs[m].variance_law_deviations]}"
                     for m in SPARSE_MODELS)
    return Paragraph(
        f"Inactive variables per random seed: {counts}. Largest |Var(mu) + mean sigma^2 - 1| per seed: {laws}. "
        f"Zeroing the inactive variables of dense16 changes generated pixels by "
        f"{g.inactive_zeroed_mean_abs_diff:.2e} on average, zeroing as many low-KL active ones by "
        f"{g.active_zeroed_mean_abs_diff:.2e}.")
