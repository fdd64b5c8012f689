"""Commands that study many runs or their products: ``reproduce`` the articles, ``sweep`` a grid,
``prune`` inactive variables, estimate the data's ``dimension``, ``generate`` and ``score`` samples,
tabulate the ``objectives``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vaescope.cli.group import main
from vaescope.core import config as config_mod
from vaescope.core.errors import VaescopeError


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
    from vaescope.prune import describe, prune_run
    from vaescope.runs.checkpoint import load_run

    loaded = load_run(run)
    thresholds = config_mod.stats_with(loaded.config, mu_variance_threshold=mu_variance_threshold,
                                       sigma2_threshold=sigma2_threshold, kl_threshold=kl_threshold)
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
