"""The ``bench`` command: vaescope's speed beside the reference loops, and its extra rows."""

from __future__ import annotations

import json

import click

from vaescope.cli.group import main


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
