"""The ``vaescope`` command line: parses arguments and calls the library, nothing else."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from vaescope.core import config as config_mod
from vaescope.core.errors import VaescopeError


class _TqdmHandler(logging.Handler):
    """Progress messages of the library (logger ``vaescope``) to stderr, above any progress bar;
    stdout keeps the results (tables, JSON)."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _configure_logging() -> None:
    logger = logging.getLogger("vaescope")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        logger.addHandler(_TqdmHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


class _Group(click.Group):
    """Turns a :class:`VaescopeError`, and a bad option, into one ``Error: ...`` line and exit
    status 2 (click's own report of a bad option is three lines with the usage)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VaescopeError as err:
            click.echo(f"Error: {err}", err=True)
            ctx.exit(2)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as err:
            where = f"; see '{err.ctx.command_path} --help'" if err.ctx is not None else ""
            click.echo(f"Error: {err.format_message().rstrip('.')}{where}", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            err.show()
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vaescope")
def main() -> None:
    """Train Variational Autoencoders and study their latent space."""
    _configure_logging()


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
    import dataclasses

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
    given = {"mu_variance_threshold": mu_variance_threshold, "sigma2_threshold": sigma2_threshold,
             "kl_threshold": kl_threshold}
    thresholds = config_mod.validate(dataclasses.replace(
        loaded.config, stats=dataclasses.replace(loaded.config.stats, **{k: v for k, v in given.items() if v is not None})
    )).stats
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
    from vaescope.inspection import inspect_run, load_user_model

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
@click.option("--quick", is_flag=True,
              help=("Short training: every experiment in about 6 minutes on 2 CPU cores (337 s measured at "
                    "commit 58c938d); the report states the time it took."))
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Random seeds per model (0, 1, ...).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder [default: runs/reproduce-quick or runs/reproduce-full].")
@click.option("--quiet", is_flag=True, help="No progress bars (epoch lines are still printed).")
@click.option("--wait", is_flag=True, help="If another reproduce is writing into --out, wait for it to finish.")
def reproduce(quick: bool, seeds: int, out: Path | None, quiet: bool, wait: bool) -> None:
    """Reproduce the articles' experiments on MNIST: report.html, report.md, figures, results.json."""
    from vaescope.reproduce import make_settings
    from vaescope.reproduce import reproduce as run_reproduce

    settings = make_settings(quick=quick, seeds=seeds, progress=not quiet)
    run_reproduce(settings, out or Path("runs") / f"reproduce-{settings.mode}", wait=wait)


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


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Interleaved rounds; medians are reported.")
@click.option("--n-train", type=int, help="Time epochs over only the first N training images (a quick run) [all].")
@click.option("--data", default="mnist", show_default=True, help="Dataset: mnist, fashion-mnist, an IDX directory or an .npz file.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="Torch threads for every contender; 0 = all cores.")
@click.option("--multi-model", "multi_models", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also time N dense16 models trained together against one after the other (0: skip).")
@click.option("--monitor", is_flag=True, help="Also time the LatentMonitor's cost on dense16 training.")
@click.option("--whole-process", is_flag=True,
              help="Also time whole 'vaescope train' processes against pythae's pipeline (3 epochs).")
@click.option("--scale", is_flag=True,
              help="Instead: one latent_statistics pass streamed over --scale-n x --scale-dim vectors (seconds and "
                   "peak memory; 10^6 x 2,000 by default, 8 GB never held at once).")
@click.option("--scale-n", type=click.IntRange(min=1), default=1_000_000, show_default=True, help="With --scale: rows.")
@click.option("--scale-dim", type=click.IntRange(min=1), default=2_000, show_default=True, help="With --scale: D.")
@click.option("--bound", "bound_images", type=click.IntRange(min=1), default=None, metavar="N",
              help="Instead: time the importance-weighted bound, K = 1,000, over the first N MNIST test digits "
                   "(10000: the test split).")
@click.option("--stacking", is_flag=True,
              help="Also time 1, 2, 4, ..., 64 dense16 models stacked on the CUDA device against one model's epoch "
                   "(without a GPU the report says none was measured).")
@click.option("--compile", "compile_row", is_flag=True,
              help="Instead: train.compile's cold and warm compile (fresh processes), eager against compiled "
                   "steps, and the break-even epochs, for dense16 and conv16.")
def bench(as_json: bool, repeats: int, n_train: int | None, data: str, threads: int, multi_models: int,
          monitor: bool, whole_process: bool, scale: bool, scale_n: int, scale_dim: int,
          bound_images: int | None, stacking: bool, compile_row: bool) -> None:
    """Time training epochs and the statistics pass against a plain PyTorch loop and pythae.

    Ends with the performance targets of this project's 2-core machine: each one reached, or how
    many times short of it the measure is (not measured where its row was not asked for)."""
    if scale or bound_images:
        from vaescope.bench.scale import bound_time, scale_statistics
        from vaescope.core.provenance import provenance

        key, found = (("scale", scale_statistics(n=scale_n, dim=scale_dim, threads=threads)) if scale
                      else ("bound", bound_time(n=bound_images, threads=threads)))  # type: ignore[arg-type]
        click.echo(json.dumps({key: found.to_dict(), "provenance": provenance()}, indent=2) if as_json
                   else found.text())
        return
    if compile_row:
        from vaescope.bench.compile import compile_benchmark, format_compile

        found = compile_benchmark(dataset=data, repeats=repeats, threads=threads)
        click.echo(json.dumps(found, indent=2) if as_json else format_compile(found))
        return
    from vaescope.bench.suite import check_targets, extra_rows, format_report, run_benchmark

    result = run_benchmark(data, repeats=repeats, n_train=n_train, threads=threads)
    result.update(extra_rows(multi_models, monitor, whole_process, repeats=repeats, stacking=stacking))
    result["targets"] = check_targets(result)
    click.echo(json.dumps(result, indent=2) if as_json else format_report(result))


@main.command()
@click.option("--preset", help="Named config the runs start from, e.g. dense16 [none: the config defaults].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A TOML file overriding the preset.")
@click.option("--grid", "grid_texts", multiple=True, metavar="KEY=V1,V2,...",
              help="Values of one config key to sweep, e.g. --grid model.latent_dim=2,4,8,16 (repeatable: the product).")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True, help="Random seeds per point (0, 1, ...).")
@click.option("--epochs", type=click.IntRange(min=1), help="Number of epochs of every run (train.epochs).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one config key of every run.")
@click.option("--data", help="Dataset: mnist, fashion-mnist, synthetic:factors=K, an IDX directory or an .npz file.")
@click.option("--workers", type=click.IntRange(min=0), default=0, help="Local worker processes [one per core].")
@click.option("--threads-per-worker", "threads", type=click.IntRange(min=0), default=0,
              help="Torch threads of each worker (or CPUs of each Ray task) [cores / workers].")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run the runs as Ray tasks: on the cluster at ADDRESS, or alone: a local Ray instance.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Sweep folder.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--wait", is_flag=True, help="If another sweep is writing into --out, wait for it to finish.")
def sweep(preset: str | None, config_file: Path | None, grid_texts: tuple[str, ...], seeds: int, epochs: int | None,
          overrides: tuple[str, ...], data: str | None, workers: int, threads: int, ray_address: str | None,
          out: Path, quiet: bool, wait: bool) -> None:
    """Train a grid of configs x seeds (local workers or Ray); sweep.json, sweep.csv, report.html."""
    from vaescope.sweeps.execute import sweep as run_sweep
    from vaescope.sweeps.plan import parse_grid

    cfg = config_mod.resolve(preset, config_file, overrides, **{"data.source": data, "train.epochs": epochs})
    rows = run_sweep(cfg, out, parse_grid(grid_texts), seeds=seeds, workers=workers, threads=threads,
                     ray=ray_address, progress=not quiet, wait=wait)
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        first = failed[0]["error"] if len(failed[0]["error"]) <= 300 else failed[0]["error"][:300] + " ..."
        raise VaescopeError(f"{len(failed)} of {len(rows)} runs failed (first: {failed[0]['run']}: {first}); "
                            f"see {out / 'sweep.json'}, and run the same command again to retry them")
    click.echo(f"swept {len(rows)} runs into {out}; open {out / 'report.html'}")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="The pruned run directory.")
@click.option("--criterion", type=click.Choice(["mu_variance", "sigma2", "kl"]), default="mu_variance", show_default=True,
              help="Which variables are inactive: Var(mu) < T (the verdict), mean sigma^2 > T, or mean KL < T.")
@click.option("--mu-variance-threshold", type=float, help="Inactive when Var(mu) is below this [run's config: 0.01].")
@click.option("--sigma2-threshold", type=float, help="With --criterion sigma2: mean sigma^2 above this [0.8].")
@click.option("--kl-threshold", type=float, help="With --criterion kl: mean KL below this, nats [0.01].")
def prune(run: Path, out: Path, criterion: str, mu_variance_threshold: float | None, sigma2_threshold: float | None,
          kl_threshold: float | None) -> None:
    """Write a smaller copy of RUN without its inactive latent variables, and prune.json."""
    import dataclasses

    from vaescope.prune import describe, prune_run
    from vaescope.runs.checkpoint import load_run

    loaded = load_run(run)
    given = {"mu_variance_threshold": mu_variance_threshold, "sigma2_threshold": sigma2_threshold,
             "kl_threshold": kl_threshold}
    thresholds = config_mod.validate(dataclasses.replace(
        loaded.config, stats=dataclasses.replace(loaded.config.stats, **{k: v for k, v in given.items() if v is not None})
    )).stats
    click.echo(describe(prune_run(run, out, criterion=criterion, thresholds=thresholds)))


@main.command()
@click.option("--data", help="Dataset: mnist, fashion-mnist, synthetic:factors=K, synthetic:linear=..., an IDX "
              "directory or an .npz file [the run's data].")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also estimate on the posterior means of this run's active variables, beside its active count.")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--points", type=click.IntRange(min=3), default=2000, show_default=True,
              help="Estimate on this many points drawn at random (without replacement) from the split.")
@click.option("--k", "ks", type=click.IntRange(min=2), multiple=True, help="Neighbours of the MLE (repeatable) [5, 10, 20].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the subsample.")
@click.option("--json", "as_json", is_flag=True, help="Print the estimates as JSON.")
def dimension(data: str | None, run_dir: Path | None, split: str, points: int, ks: tuple[int, ...], seed: int,
              as_json: bool) -> None:
    """Estimate the intrinsic dimension (TwoNN, Levina-Bickel MLE; scikit-dimension) of data and of a run's codes."""
    from vaescope.dimension import dimension_report, report_text

    report = dimension_report(data, run_dir, split=split, ks=ks or (5, 10, 20), n=points, seed=seed)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report_text(report))


_SAMPLER_HELP = ("Where the codes come from: prior (N(0, I) in every variable), gmm (a 100-component Gaussian mixture "
                 "fitted on the active posterior means) or two-stage (a second VAE on them, Dai & Wipf); the fitted "
                 "ones are kept in RUN/samplers.")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--sampler", type=click.Choice(["prior", "gmm", "two-stage"]), default="prior", show_default=True,
              help=_SAMPLER_HELP)
@click.option("--n", "n", type=click.IntRange(min=1), default=100, show_default=True, help="Samples to draw.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the draws.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for samples.safetensors, grid.png and generate.json.")
def generate(run: Path, sampler: str, n: int, seed: int, out: Path) -> None:
    """Decode N samples of a trained RUN's latent space (prior, Gaussian mixture or second stage)."""
    from vaescope.generative.samplers import generate as run_generate
    from vaescope.generative.samplers import write_samples

    images, fitted = run_generate(run, sampler, n, seed)
    write_samples(images, out, {"run": str(run), "sampler": sampler, "seed": seed, "fit": fitted.info})
    click.echo(f"{n} samples of {run} ({sampler}) in {out}: samples.safetensors, grid.png, generate.json")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--sampler", "samplers", type=click.Choice(["prior", "gmm", "two-stage"]), multiple=True,
              help=_SAMPLER_HELP + " Repeatable [prior].")
@click.option("--n", "n", type=click.IntRange(min=10), default=10_000, show_default=True,
              help="Samples scored against as many test images.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the draws.")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
def score(run: Path, samplers: tuple[str, ...], n: int, seed: int, as_json: bool) -> None:
    """Score a RUN's samples with no download: Frechet distance and precision/recall/density/coverage on the
    features of a LeNet vaescope trains once and caches (MNIST, Fashion-MNIST); RUN/score-SAMPLER.json."""
    from vaescope.generative.score import describe, score_run, write_score

    results = []
    for sampler in samplers or ("prior",):
        result = score_run(run, sampler, n, seed)
        write_score(run, result)
        results.append(result)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for result in results:
            click.echo(describe(result))


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for objectives.json, objectives.md and the run directories (runs/); run the same "
                   "command again to resume: finished runs and their measures are reused.")
@click.option("--seeds", type=click.IntRange(min=1), help="Random seeds per objective and architecture [3; --quick: 1].")
@click.option("--quick", is_flag=True,
              help="A much smaller table to try the command, a few minutes on 2 CPU cores: 2 dense and 1 conv "
                   "epochs, one seed, 1,000 samples, a 20-component mixture, the bound on 200 digits.")
@click.option("--data", default="mnist", show_default=True,
              help="mnist or fashion-mnist (the score's classifier is trained on one of these).")
def objectives(out: Path, seeds: int | None, quick: bool, data: str) -> None:
    """The table of objectives x samplers on dense16 and conv16: the ELBO (Bernoulli and Gaussian decoders);
    balanced, after A. Asperti and M. Trentin, "Balancing reconstruction error and Kullback-Leibler divergence
    in Variational Autoencoders" (2020); the optimal and the learned decoder variance of O. Rybkin, K. Daniilidis
    and S. Levine, "Simple and Effective VAE Training with Calibrated Decoders" (2021). Per run: active variables,
    the variance law, test -ELBO, the bound of Y. Burda, R. Grosse and R. Salakhutdinov, "Importance Weighted
    Autoencoders" (2016), and the Frechet distance and precision/recall of the prior, a 100-component Gaussian
    mixture and the second stage of B. Dai and D. Wipf, "Diagnosing and Enhancing VAE Models" (2019). Writes
    objectives.json and objectives.md; the full table takes about an hour on 2 CPU cores."""
    from vaescope.generative.plan import table_settings
    from vaescope.generative.table import objectives_table, summary_lines

    results = objectives_table(table_settings(quick=quick, seeds=seeds, data_source=data), out)
    for line in summary_lines(results, out):
        click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(prog_name="vaescope"))
