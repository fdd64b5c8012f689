"""Commands on one run: ``train`` it, read its ``stats``, ``inspect`` it (or a model of your own),
``verify`` its files; and the ``presets`` it can start from."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from vaescope.cli.group import main
from vaescope.core import config as config_mod
from vaescope.core.errors import VaescopeError


@main.command()
@click.option("--preset", help="Named config: dense16, dense3, dense2, conv16, dense16_no_kl, dense16_ae "
              "[none: the config defaults, a dense 784-256-64-32-16 VAE].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A TOML file overriding the preset.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one config key, e.g. --set loss.beta=2 (repeatable).")
@click.option("--data", help="Dataset: mnist, fashion-mnist, an IDX directory or an .npz file.")
@click.option("--model", "factory", metavar="PACKAGE.MODULE:FACTORY",
              help="Train a model of your own: FACTORY(image_shape, model_config) returns an nn.Module with "
                   "encode(x) -> (mu, logvar) and decode(z) -> logits. This imports and runs your module "
                   "(now, and again when the run is resumed or measured); sets model.factory.")
@click.option("--epochs", type=click.IntRange(min=1), help="Number of epochs (train.epochs).")
@click.option("--seed", type=click.IntRange(min=0), help="Random seed (train.seed).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory [default: runs/PRESET-seedS].")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(preset: str | None, config_file: Path | None, overrides: tuple[str, ...], data: str | None,
          factory: str | None, epochs: int | None, seed: int | None, out: Path | None, resume: bool,
          quiet: bool) -> None:
    """Train a VAE and write its run directory."""
    from vaescope.training.train import train as run_training

    if resume and out is None:
        raise VaescopeError("--resume needs --out: the run directory to continue")
    given = preset or config_file or overrides or data or factory or epochs is not None or seed is not None
    cfg = None
    if given or not resume:  # with --resume and nothing else, the run's stored config
        cfg = config_mod.resolve(preset, config_file, overrides, **{
            "data.source": data, "model.factory": factory, "train.epochs": epochs, "train.seed": seed})
    if out is None:
        out = Path("runs") / f"{cfg.name}-seed{cfg.train.seed}"  # type: ignore[union-attr]
    result = run_training(cfg, out, resume=resume, progress=not quiet)
    click.echo(f"trained {result.run_dir}: {len(result.metrics)} epochs; next: vaescope stats {result.run_dir}")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@click.option("--mu-variance-threshold", type=float, help="Inactive when Var(mu) is below this [run's config: 0.01].")
@click.option("--sigma2-threshold", type=float, help="Criterion shown beside: mean sigma^2 above this [0.8].")
@click.option("--kl-threshold", type=float, help="Criterion shown beside: mean KL below this, nats [0.01].")
@click.option("--mi", "with_mi", is_flag=True, help="Also I(x; z) and every I(x; z_j) (He et al. 2019), at most log N.")
@click.option("--samples", type=int, default=1, show_default=True, help="With --mi: codes drawn per image.")
@click.option("--iwae", "iwae", multiple=True, metavar="K",
              help="The importance-weighted bound on log p(x) with K samples (Burda et al.); repeatable or a "
                   "list, e.g. --iwae 1,10,100,1000.")
@click.option("--iwae-images", type=int, help="With --iwae: only the first N images of the split [all].")
@click.option("--figure", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the criteria figure (active count against each threshold) as this PNG.")
@click.option("--likelihood", metavar="NAME",
              help="The decoder's likelihood: bernoulli, gaussian, gaussian:VARIANCE, gaussian:decoded, categorical, poisson, negative-binomial (for the gains and --iwae) [the run's loss.reconstruction].")
def stats(run: Path, split: str, as_json: bool, mu_variance_threshold: float | None,
          sigma2_threshold: float | None, kl_threshold: float | None, with_mi: bool, samples: int,
          iwae: tuple[str, ...], iwae_images: int | None, figure: Path | None, likelihood: str | None) -> None:
    """Per-variable latent statistics of a trained RUN over a full split (the sparsity article's Table 1),
    with every activity criterion side by side; --mi and --iwae add the information measures."""
    from vaescope.measures.run import run_measures
    from vaescope.reports.tables import criteria_text
    from vaescope.runs.checkpoint import load_run

    try:
        ks = tuple(sorted({int(k) for text in iwae for k in text.replace(",", " ").split()}))
    except ValueError:
        raise VaescopeError(f"--iwae {' '.join(iwae)}: give whole numbers K >= 1, e.g. --iwae 1,10,100,1000") from None
    for name, value in (("--iwae", min(ks, default=1)), ("--samples", samples), ("--iwae-images", iwae_images or 1)):
        if value < 1:
            raise VaescopeError(f"{name} is {value}; it must be at least 1")
    loaded = load_run(run)
    thresholds = config_mod.stats_with(loaded.config, mu_variance_threshold=mu_variance_threshold,
                                       sigma2_threshold=sigma2_threshold, kl_threshold=kl_threshold)
    result = run_measures(loaded, split=split, thresholds=thresholds, mutual_information=with_mi, iwae_ks=ks,
                          samples=samples, iwae_images=iwae_images, likelihood=likelihood)
    if figure is not None:
        from vaescope.measures.criteria import threshold_sweeps
        from vaescope.reports.figures.common import save_png
        from vaescope.reports.figures.criteria import criteria_figure

        save_png(criteria_figure(result.criteria, threshold_sweeps(result.criteria),
                                 title=f"{run} ({loaded.config.name}), {split} split"), figure)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(criteria_text(result.stats, result.criteria, result.mutual_information, result.iwae_bound,
                                 title=f"{run} ({loaded.config.name}), {split} split, {result.stats.n} examples"))
        click.echo(f"likelihood of the gains: {result.gain.likelihood}")
        click.echo(result.lesson.text())


@main.command()
@click.argument("run", required=False, type=click.Path(path_type=Path))
@click.option("--model", "model_ref", metavar="PACKAGE.MODULE:FACTORY",
              help="Inspect your own model instead of a RUN: this IMPORTS AND RUNS YOUR PYTHON CODE (the module "
                   "and its factory, called with no argument, with the image shape (C, H, W), or with (image shape, "
                   "model config)). Needs --data and --out.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
              help="With --model: a .safetensors state dict to load into the model (never a pickle).")
@click.option("--data", help="With --model: mnist, fashion-mnist, an IDX directory or an .npz file [RUN's data].")
@click.option("--trace", "trace_dir", type=click.Path(file_okay=False, path_type=Path),
              help="With --model: a folder holding a trace.csv (a LatentMonitor log_dir) to draw.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--samples", type=int, default=1000, show_default=True, help="Prior samples for the generation check.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder [RUN/inspect].")
@click.option("--likelihood", metavar="NAME",
              help="The decoder's likelihood: bernoulli, gaussian, gaussian:VARIANCE, gaussian:decoded, categorical, poisson, negative-binomial [a RUN's loss.reconstruction; else what the model says, else bernoulli].")
def inspect(run: Path | None, model_ref: str | None, weights: Path | None, data: str | None, trace_dir: Path | None,
            split: str, samples: int, out: Path | None, likelihood: str | None) -> None:
    """One model's latent space as report.html (self-contained) and inspect.json: Table 1 with every
    activity criterion, the recorded trace, reconstruction gains, generation with inactive variables
    zeroed (images) or each variable's effect on the decoded data (vectors, tokens), the variance law,
    and what it means. Give a RUN directory, or --model with --data and --out."""
    from vaescope.inspection import inspect as run_inspect
    from vaescope.inspection import inspect_run
    from vaescope.models.user_model import load_user_model

    if samples < 1:
        raise VaescopeError(f"--samples is {samples}; it must be at least 1")
    if (run is None) == (model_ref is None):
        raise VaescopeError("give a RUN directory or --model PACKAGE.MODULE:FACTORY (one of the two)")
    if run is not None:
        if weights or data or trace_dir:
            raise VaescopeError("--weights, --data and --trace go with --model; a RUN brings its own")
        result = inspect_run(run, out, split=split, samples=samples,
                             **({} if likelihood is None else {"likelihood": likelihood}))
    else:
        if data is None or out is None:
            raise VaescopeError("--model needs --data (the images) and --out (the report's folder)")
        from vaescope.data.sources import load_dataset

        dataset = load_dataset(data)
        model = load_user_model(model_ref, dataset.image_shape, weights)  # type: ignore[arg-type]
        result = run_inspect(model, dataset, out, trace=trace_dir, split=split, samples=samples,
                             label=model_ref, likelihood=likelihood)
    stats = result.results["statistics"]
    click.echo(f"{stats['inactive_count']} of {stats['latent_dim']} variables inactive; report: {result.report}")
    click.echo(result.results["lesson"]["text"])


@main.command()
def presets() -> None:
    """List the shipped presets."""
    for name in config_mod.preset_names():
        cfg = config_mod.resolve(name)
        m = cfg.model
        shape = "-".join(map(str, m.hidden)) if m.kind == "dense" else f"conv{list(m.conv_channels)}-{m.conv_dense}"
        extra = "" if cfg.loss.sampling else (" no sampling" + (", no penalty" if cfg.loss.beta == 0 else ", quadratic penalty"))
        click.echo(f"{name:<14} {m.kind:<5} {shape}-{m.latent_dim}{extra}")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
def verify(run: Path) -> None:
    """Check the files of a finished RUN against the SHA-256 its manifest.json records."""
    from vaescope.runs.manifest import MANIFEST_FILE, verify_run

    if not run.is_dir():
        raise VaescopeError(f"run directory {run} does not exist; check the path")
    result = verify_run(run)
    if not result.has_manifest:
        raise VaescopeError(f"{run} has no {MANIFEST_FILE}: the run is unfinished, or was written before vaescope "
                            f"recorded manifests; 'vaescope train --out {run} --resume' finishes it and writes one")
    for line in result.problems:
        click.echo(f"Error: {line}", err=True)
    if result.problems:
        sys.exit(2)
    click.echo(f"{run}: {len(result.matching)} files match {MANIFEST_FILE} ({', '.join(result.matching)})")
