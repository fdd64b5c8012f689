"""``vaescope reproduce``: train (or reuse) the articles' models, run their experiments, write the report.

The command runs a list of :class:`Step` in order against one :class:`Context`: the static
experiments (:mod:`.sparsity`: sparsity and the variance law), then the dynamic ones
(:mod:`.dynamics`: collapse by noise, the KL ablation, trajectories). To add an experiment, write
a step function of the context in one of those modules (or a new one) and list it in that
module's ``steps(settings)``; tests pass ``steps=[...]`` to :func:`reproduce` directly.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from vaescope.core.provenance import describe, provenance
from vaescope.core.storage import atomic_write_json, directory_lock, remove_temporaries
from vaescope.data.dataset import Dataset
from vaescope.data.sources import load_dataset
from vaescope.reports.html import Paragraph, write_report
from vaescope.reports.text import REFERENCES, references_section
from vaescope.reproduce import dynamics, sparsity
from vaescope.reproduce.context import Context, ModelRuns, PlannedRun, Settings, Step, TrainedRun, make_settings

__all__ = ["Context", "ModelRuns", "PlannedRun", "Settings", "Step", "TrainedRun", "default_steps", "make_settings", "reproduce"]

log = logging.getLogger(__name__)
TITLE = "vaescope: reproducing A. Asperti's results on the KL term, sparsity and the variance law"


def default_steps(settings: Settings) -> list[Step]:
    """The static steps, then the dynamic ones."""
    return sparsity.steps(settings) + dynamics.steps(settings)


def reproduce(settings: Settings, out: str | Path, steps: list[Step] | None = None,
              dataset: Dataset | None = None, wait: bool = False) -> dict[str, Any]:
    """Run every step, then write ``results.json``, ``report.html`` and ``report.md`` into ``out``.

    ``results.json`` is also rewritten after each step, so an interrupted run keeps what it measured;
    run again, it reuses the finished runs and resumes an interrupted one from its checkpoint.
    ``out`` is locked for the whole command: another ``reproduce`` into it is refused with this
    process's PID, or with ``wait`` waits for it to finish. Returns the results.
    """
    out = Path(out)
    with directory_lock(out, "output folder", wait=wait,
                        hint="wait for it to finish (--wait queues behind it) or choose another --out"):
        remove_temporaries(out)  # a killed command's; the lock says no live writer owns them
        remove_temporaries(out / "figures")
        return _reproduce_locked(settings, out, steps, dataset)


def _reproduce_locked(settings: Settings, out: Path, steps: list[Step] | None,
                      dataset: Dataset | None) -> dict[str, Any]:
    started = time.perf_counter()
    steps = default_steps(settings) if steps is None else steps
    log.info("vaescope reproduce (%s, %d seed(s)) -> %s", settings.mode, settings.seeds, out)
    data = dataset if dataset is not None else load_dataset(settings.data_source)
    ctx = Context(settings, out, data)
    ctx.planned = [spec for step in steps if step.runs is not None for spec in step.runs(ctx)]
    ctx.results.update({
        "mode": settings.mode,
        "seeds": ctx.seeds,
        "dataset": data.name,
        "split": "test",
        "epochs": dict(settings.epochs),
        "references": [ref.to_dict() for ref in REFERENCES],
        "provenance": provenance(),
    })
    step_seconds: dict[str, float] = {}
    for k, step in enumerate(steps, 1):
        log.info("[%d/%d] %s", k, len(steps), step.title)
        t0 = time.perf_counter()
        step.run(ctx)
        step_seconds[step.id] = round(time.perf_counter() - t0, 2)
        ctx.results["timing"] = {"step_seconds": step_seconds}
        atomic_write_json(out / "results.json", ctx.results)
    total = time.perf_counter() - started
    ctx.results["timing"] = {"step_seconds": step_seconds, "total_seconds": round(total, 1),
                             "machine": describe(ctx.results["provenance"])}
    atomic_write_json(out / "results.json", ctx.results)
    html_path, _ = write_report(out, TITLE, [*ctx.sections, references_section()], _intro(ctx, total))
    log.info("wrote %s, %s and %s in %.0f s", html_path, out / "report.md", out / "results.json", total)
    return ctx.results


def _intro(ctx: Context, seconds: float) -> list[Paragraph]:
    s = ctx.settings
    epochs = ", ".join(f"{k} {v}" for k, v in s.epochs.items())
    runs = ctx.trained_runs
    reused = sum(r.reused for r in runs)
    return [Paragraph(
        "The experiments of three articles by A. Asperti (references at the end) on "
        f"`{ctx.dataset.name}`. Mode **{s.mode}**: {s.seeds} random seed(s) per model "
        f"({', '.join(map(str, ctx.seeds))}); epochs: {epochs}. Every statistic is over the test split "
        f"({len(ctx.dataset.x_test)} images) unless a section says otherwise. "
        f"Took {seconds:.0f} s with {describe(ctx.results['provenance'])}"
        f"{f', reusing {reused} of {len(runs)} trained runs' if reused else ''}. "
        "Every number shown is in `results.json`."
    )]
