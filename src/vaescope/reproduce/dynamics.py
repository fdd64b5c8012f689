"""The dynamic experiments of ``vaescope reproduce``: the latent space while it moves.

Steps, in order: a variable of dense16 driven to collapse by noise and left to recover; the 3-D
net trained with and without sampling (codes, generations from five slices, coverage numbers);
trajectories of digits in a 2-D latent space during the first epoch and their layout after 10.
Each step calls the pure functions of :mod:`vaescope.experiments` and adds a ``results.json``
block (``noise_collapse``, ``kl_ablation``, ``trajectories``), figures and a report section.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vaescope.experiments.kl_ablation import KLAblationSettings, ablation_arm
from vaescope.experiments.noise_collapse import NoiseCollapseSettings, noise_collapse
from vaescope.experiments.trajectories import TrajectorySettings, add_final_layout, record_trajectories
from vaescope.reports.figures import dynamics as figs
from vaescope.reports.html import Image, Paragraph, Section, Table
from vaescope.reports.text import architecture
from vaescope.reproduce.context import Context, PlannedRun, Settings, Step

log = logging.getLogger(__name__)

ANIMATION = "figures/trajectories.gif"


@dataclass(frozen=True)
class DynamicSettings:
    noise: NoiseCollapseSettings
    ablation: KLAblationSettings
    trajectory: TrajectorySettings
    dense3_epochs: int  # unless the reproduce settings name epochs for "dense3"


def dynamic_settings(quick: bool) -> DynamicSettings:
    """Quick: about 1.5 minutes on 2 CPU cores beyond the dense16 run the static steps train."""
    if quick:
        noise = NoiseCollapseSettings(noise_step=0.75, max_noise_epochs=8, max_hold_epochs=12,
                                      max_recovery_epochs=10, settle_epochs=4)
        trajectory = TrajectorySettings(record_epochs=1, record_every=8)
        return DynamicSettings(noise, KLAblationSettings(), trajectory, dense3_epochs=6)
    noise = NoiseCollapseSettings(noise_step=0.25, max_noise_epochs=40, max_hold_epochs=30,
                                  max_recovery_epochs=40, settle_epochs=8)
    trajectory = TrajectorySettings(record_epochs=3, record_every=5)
    return DynamicSettings(noise, KLAblationSettings(), trajectory, dense3_epochs=40)


def steps(settings: Settings) -> list[Step]:
    return [
        Step("noise-collapse", "collapse of a dense16 variable by noise, and its recovery", noise_collapse_step,
             runs=lambda ctx: [PlannedRun("dense16", ctx.seeds[0])]),
        Step("kl-ablation", "3-D latent space with and without sampling", kl_ablation_step,
             runs=lambda ctx: list(kl_ablation_runs(ctx).values())),
        Step("trajectories", "trajectories in a 2-D latent space", trajectories_step,
             runs=lambda ctx: [trajectory_run(ctx)]),
    ]


def _g(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


# ---------------------------------------------------------------------------- noise collapse

def noise_collapse_step(ctx: Context) -> None:
    settings = dynamic_settings(ctx.settings.quick).noise
    tr = ctx.trained("dense16", ctx.seeds[0])
    intro = Paragraph(
        f"As in the sparsity article (Figure 3): starting from dense16 (seed {tr.seed}, "
        f"{tr.run.config.train.epochs} epochs), Gaussian noise is added to one active variable's sampled z and "
        f"its std raised by {settings.noise_step:g} before each epoch of training, until the variable's "
        "reconstruction gain (test error with mu_j set to 0 minus the error without) falls below its mean KL. "
        "The noise is then held until the variable collapses (Var(mu) < "
        f"{tr.run.config.stats.mu_variance_threshold:g} and mean sigma^2 > {tr.run.config.stats.sigma2_threshold:g}) "
        f"or {settings.max_hold_epochs} epochs pass, then removed; training goes on until the variable has been active "
        f"again for {settings.settle_epochs + 1} epochs in a row or {settings.max_recovery_epochs} epochs pass. "
        "The variables inactive at the start are kept inactive throughout: the decoder receives 0 for them.")
    if not tr.stats.active.any():
        ctx.results["noise_collapse"] = {"variable": None, "collapsed": False, "collapse_epoch": None,
                                         "gain_before": None, "recovered": False, "gain_after": None,
                                         "recovered_fraction": None, "skipped": "no active variable"}
        ctx.sections.append(Section("noise-collapse", "Collapse by noise, and recovery", [
            intro, Paragraph("Skipped: the dense16 model has no active variable.")]))
        return
    result = noise_collapse(tr.run.model, ctx.dataset.x_train, ctx.dataset.x_test, tr.run.config.loss, settings,
                            tr.run.config.stats)
    ctx.results["noise_collapse"] = {
        "variable": result.variable,
        "collapsed": result.collapsed,
        "collapse_epoch": result.collapse_epoch,
        "gain_before": result.gain_before,
        "recovered": result.recovered,
        "gain_after": result.gain_after,
        "recovered_fraction": result.recovered_fraction,
        "model": f"dense16-seed{tr.seed}",
        "noise_at_stop": result.noise_at_stop,
        "kl_before": result.kl_before,
        "recovery_epoch": result.recovery_epoch,
        "kept_inactive": result.kept_inactive,
        "seconds": round(result.seconds, 1),
        "settings": asdict(settings),
        "history": result.history,
    }
    image = ctx.figure(figs.noise_collapse_figure(result, tr.run.config.stats.mu_variance_threshold), "noise_collapse",
                       f"Variable {result.variable} of dense16 against epochs of the experiment. Top: reconstruction "
                       "gain and mean KL (nats per test digit), noise std (dashed, right axis). Bottom: Var(mu) and "
                       "mean sigma^2 over the test set. Shaded: noise raised, held, removed; dotted: collapse.")
    ctx.sections.append(Section("noise-collapse", "Collapse by noise, and recovery",
                                [intro, image, Paragraph(_noise_story(result, settings.variable is not None))]))


def _noise_story(result: Any, chosen: bool) -> str:
    rows = result.history
    crossed = next((r for r in rows if r["phase"] == "noise" and r["gain"] < r["kl"]), None)
    first = rows[0]
    why = "chosen in the settings" if chosen else "the active variable with the smallest gain"
    text = (f"Variable {result.variable} ({why}): gain {first['gain']:.2f} nats, KL {first['kl']:.2f} nats, "
            f"Var(mu) {first['mu_variance']:.3f} before the noise; kept inactive: {result.kept_inactive}. ")
    peak = max(r["mu_variance"] for r in rows if r["phase"] in ("noise", "hold")) if len(rows) > 1 else 0.0
    text += f"Under noise, Var(mu) peaked at {peak:.2f}. "
    if crossed is not None:
        text += (f"The gain fell below the KL at noise std {crossed['noise_std']:g} (epoch {crossed['epoch']}: gain "
                 f"{crossed['gain']:.3f}, KL {crossed['kl']:.3f}, Var(mu) {crossed['mu_variance']:.3f}, mean sigma^2 "
                 f"{crossed['sigma2_mean']:.3f}). ")
    else:
        text += f"The gain stayed above the KL up to noise std {result.noise_at_stop:g}, the limit. "
    if result.collapsed:
        at = rows[result.collapse_epoch]
        text += (f"The variable **collapsed** at epoch {result.collapse_epoch} (noise std {at['noise_std']:g}): "
                 f"Var(mu) {at['mu_variance']:.4f}, mean sigma^2 {at['sigma2_mean']:.3f}, gain {at['gain']:.3f}. ")
    else:
        last_noisy = [r for r in rows if r["phase"] in ("noise", "hold")][-1]
        text += (f"It did **not collapse** within the epoch limits (last Var(mu) under noise "
                 f"{last_noisy['mu_variance']:.4f}). ")
    if result.recovered:
        rising = len(rows) > 1 and rows[-1]["gain"] > rows[-2]["gain"]
        text += (f"Without noise it was active again from epoch {result.recovery_epoch}; at the end (epoch "
                 f"{rows[-1]['epoch']}) its gain is {result.gain_after:.2f} nats"
                 + (f", {100 * result.recovered_fraction:.0f}% of the gain before the noise"
                    if result.recovered_fraction is not None else "")
                 + (", and still rising." if rising else "."))
    elif result.collapsed:
        text += (f"Without noise it was **not** active again within {len(rows) - 1 - result.collapse_epoch} epochs "
                 f"(final Var(mu) {rows[-1]['mu_variance']:.4f}, gain {result.gain_after:.3f}).")
    return text


# ---------------------------------------------------------------------------- KL ablation

# The latent size is pinned because ``reproduce``'s overrides (tests use tiny models) apply to
# every preset; on MNIST it repeats the preset's own value.
DENSE3 = ("model.latent_dim=3",)
DENSE2 = ("model.latent_dim=2",)


def kl_ablation_runs(ctx: Context) -> dict[str, PlannedRun]:
    """The KL ablation's two dense3 runs (first seed), with and without sampling."""
    seed = ctx.seeds[0]
    epochs = ctx.settings.epochs.get("dense3", dynamic_settings(ctx.settings.quick).dense3_epochs)
    return {"with sampling": PlannedRun("dense3", seed, epochs, DENSE3),
            "without sampling": PlannedRun("dense3", seed, epochs, (*DENSE3, "loss.sampling=false"),
                                        name="dense3_no_sampling")}


def kl_ablation_step(ctx: Context) -> None:
    settings = dynamic_settings(ctx.settings.quick).ablation
    runs = {name: ctx.run(spec) for name, spec in kl_ablation_runs(ctx).items()}
    arms = {name: ablation_arm(tr.run.model, ctx.dataset.x_test, ctx.dataset.y_test, settings)
            for name, tr in runs.items()}
    block: dict[str, Any] = {}
    for (name, arm), tr in zip(arms.items(), runs.values()):
        block[name.replace(" ", "_")] = {**arm.summary(), "model": f"{tr.name}-seed{tr.seed}",
                                         "epochs": tr.run.config.train.epochs,
                                         "test_reconstruction": tr.metrics[-1]["test_reconstruction"]}
    block["n_prior_samples"] = settings.n_prior
    block["slice_levels"] = next(iter(arms.values())).slice_levels.tolist()
    ctx.results["kl_ablation"] = block
    epochs = runs["with sampling"].run.config.train.epochs
    codes = ctx.figure(figs.kl_ablation_codes_figure(arms), "kl_ablation_codes",
                       f"mu of {len(next(iter(arms.values())).codes)} test digits in the 3-D latent space of the "
                       f"{architecture(runs['with sampling'].run.config, ctx.dataset.image_shape)} net ({epochs} epochs), coloured by class: a 3-D view and the three "
                       "projections. Dashed: radius 2 of the prior N(0, I).")
    slices = ctx.figure(figs.kl_ablation_generations_figure(arms), "kl_ablation_slices",
                        "Digits decoded from five horizontal slices of the latent space (five levels of z3, the "
                        "equal-probability quantiles of N(0, 1)), 25 points of a (z1, z2) grid in each.")
    rows = [[name, f"{arm.nearest_code_distance:.3f}", f"{arm.extra['prior_reference_distance']:.3f}",
             f"{arm.fitted_kl:.3f}", ", ".join(f"{s:.3f}" for s in np.sqrt(np.diag(arm.fitted_cov))),
             _g(runs[name].metrics[-1]["test_reconstruction"], 4)] for name, arm in arms.items()]
    ctx.sections.append(Section("kl-ablation", "Sampling versus no sampling in a 3-D latent space", [
        Paragraph(f"As in the KL article (Figure 3): the dense "
                  f"{architecture(runs['with sampling'].run.config, ctx.dataset.image_shape)} net trained as a VAE, and "
                  "trained with z = mu and only the quadratic penalty mu^2/2 kept (`loss.sampling = false`). "
                  "Coverage as numbers: the mean distance from "
                  f"{settings.n_prior} samples of the prior N(0, I) to their nearest code (beside it, the same "
                  "distance when the codes are themselves prior samples), and the KL divergence from a Gaussian "
                  "fitted to the codes (mean and covariance) to N(0, I)."),
        codes, slices,
        Table(["training", "mean distance prior sample -> nearest code", "same, codes drawn from the prior",
               "KL(Gaussian fit || N(0, I)) (nats)", "std of the codes per axis", "test reconstruction (nats)"],
              rows, caption=f"First {len(next(iter(arms.values())).codes)} test digits, seed {ctx.seeds[0]}."),
    ]))


# ---------------------------------------------------------------------------- trajectories

def trajectory_run(ctx: Context) -> PlannedRun:
    """The trajectories' dense2 run (first seed)."""
    return PlannedRun("dense2", ctx.seeds[0], dynamic_settings(ctx.settings.quick).trajectory.epochs, DENSE2)


def trajectories_step(ctx: Context) -> None:
    settings = dynamic_settings(ctx.settings.quick).trajectory
    seed = ctx.seeds[0]
    config = ctx.config_for("dense2", seed, epochs=settings.epochs, overrides=DENSE2)
    log.info("trajectories: recording %d epoch(s) of dense2 every %d minibatches", settings.record_epochs,
             settings.record_every)
    recorded = record_trajectories(config, ctx.dataset, settings)
    tr = ctx.run(trajectory_run(ctx))
    result = add_final_layout(recorded, tr.run.model, ctx.dataset, tr.run.config.train.epochs, settings)
    figs.save_animation(figs.trajectories_animation(result), ctx.out / ANIMATION)
    ctx.results["trajectories"] = {
        "animation": ANIMATION,
        "sigma2_mean_start": result.sigma2_mean_start,
        "sigma2_mean_end": result.sigma2_mean_end,
        "sigma2_mean_final": result.sigma2_mean_final,
        "sigma2_mean_test_final": tr.stats.sigma2_mean.tolist(),
        "model": f"dense2-seed{seed}",
        **{k: v for k, v in result.summary().items() if not k.startswith("sigma2")},
        "settings": asdict(settings),
    }
    paths = ctx.figure(figs.trajectories_figure(result), "trajectories",
                       f"{len(result.labels)} test digits (one per class) in the 2-D latent space of the "
                       f"{architecture(tr.run.config, ctx.dataset.image_shape)} net, recorded every {settings.record_every} minibatches over "
                       + ("the first epoch" if settings.record_epochs == 1 else f"the first {settings.record_epochs} epochs")
                       + "; trails fade from old to new; circles have "
                       "r^2 = sqrt(sigma_1^2 sigma_2^2).")
    final = ctx.figure(figs.final_layout_figure(result), "trajectories_final",
                       f"{len(result.final_labels)} test digits ({settings.final_per_class} per class) after "
                       f"{result.epochs} epochs: circles at mu with r^2 = sqrt(sigma_1^2 sigma_2^2). "
                       "Dashed: radius 2 of the prior.")
    ctx.sections.append(Section("trajectories", "Trajectories in a 2-D latent space", [
        Paragraph("As in the KL article (Figures 1 and 2). The digits' paths come from the first epochs of "
                  f"the same training run (same seed, data order and noise) as the {result.epochs}-epoch model of "
                  "the second figure."),
        paths,
        Image(ANIMATION, f"The same paths frame by frame: an animation of {len(result.steps)} frames."),
        final,
        Paragraph(f"Mean sigma^2 of the tracked digits (both variables): {result.sigma2_mean_start:.3f} before "
                  f"training, {result.sigma2_mean_end:.4f} after {result.steps[-1]} minibatches; "
                  f"{result.sigma2_mean_final:.4f} for the snapshot digits after {result.epochs} epochs "
                  f"(over the whole test set: {', '.join(f'{v:.4f}' for v in tr.stats.sigma2_mean)} for z1, z2)."),
    ]))
