"""``vaescope reproduce``: train (or reuse) the seed's models, run its experiments, write the report.

The command is a list of :class:`Step` objects run in order against one :class:`Context`. A step
trains or reuses the runs it needs (``ctx.trained(preset, seed)``), runs experiments (pure
functions in :mod:`vaescope.experiments`), stores numbers in ``ctx.results`` (-> ``results.json``),
saves figures (``ctx.figure``) and appends report sections (``ctx.sections``).

Adding experiments from another module, without editing this one's steps:

1. In your module (e.g. ``vaescope/reproduce_dynamics.py``) write functions ``def run(ctx: Context)``
   and expose ``def steps(settings: Settings) -> list[Step]`` returning them, e.g.
   ``[Step("noise-collapse", "collapse by noise and recovery", run_noise_collapse)]``.
   Read ``settings.quick`` to choose your own quick/full sizes.
2. Inside a step: ``tr = ctx.trained("dense16", ctx.seeds[0])`` gives a trained run (reused from
   ``DIR/runs/dense16-seed0`` when its config matches; ``name=`` keeps variants apart), with
   ``tr.run.model``, ``tr.stats`` (test split), ``tr.trace``; ``ctx.dataset`` is the data;
   ``ctx.results["noise_collapse"] = {...}`` adds a block to ``results.json``;
   ``ref = ctx.figure(fig, "noise_collapse", "caption")`` saves ``figures/noise_collapse.png`` and
   returns a :class:`vaescope.report.Image`; ``ctx.sections.append(Section(id, title, [blocks]))``
   adds a section (see :mod:`vaescope.report`); ``ctx.log("...")`` prints a progress line.
3. Add your module's name to :data:`STEP_MODULES` below. Steps run in that order; their
   sections follow each other in the report.

Tests can pass ``steps=[...]`` to :func:`reproduce` directly.
"""

from __future__ import annotations

import importlib
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from . import config as config_mod
from .analysis import run_statistics
from .checkpoint import CONFIG_FILE, WEIGHTS_FILE, Run, load_run
from .config import Config
from .data import Dataset, load_dataset
from .errors import VaescopeError
from .figures.common import save_png
from .report import Image, Paragraph, Section, write_report
from .stats import LatentStatistics
from .storage import atomic_write_json, read_json
from .train import Trace, read_metrics, read_trace
from .train import train as train_run

# Modules whose ``steps(settings)`` make up the command, in order.
STEP_MODULES: tuple[str, ...] = ("vaescope.reproduce_sparsity", "vaescope.reproduce_dynamics")

# Epochs per preset. Quick: within ~5 minutes on 2 CPU cores for the static part, and long
# enough that dense16 is clearly sparse (9/16 inactive after 10 epochs with seed 0).
QUICK_EPOCHS: dict[str, int] = {"dense16": 10, "dense16_no_kl": 10, "conv16": 5}
FULL_EPOCHS: dict[str, int] = {"dense16": 40, "dense16_no_kl": 40, "conv16": 20}


@dataclass(frozen=True)
class Settings:
    """What ``reproduce`` runs. ``overrides`` (``key=value``) apply to every model's config:
    tests use them for tiny models; ``data_source`` names the dataset (``mnist`` by default)."""

    quick: bool = True
    seeds: int = 3
    epochs: dict[str, int] = field(default_factory=lambda: dict(QUICK_EPOCHS))
    overrides: tuple[str, ...] = ()
    data_source: str = "mnist"
    generation_samples: int = 1000
    progress: bool = True

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"

    def epochs_for(self, preset: str) -> int:
        default = QUICK_EPOCHS["dense16"] if self.quick else FULL_EPOCHS["dense16"]
        return self.epochs.get(preset, default)


def make_settings(quick: bool = False, seeds: int = 3, **kwargs: Any) -> Settings:
    """Settings of the quick or full mode; ``kwargs`` override fields."""
    if seeds < 1:
        raise VaescopeError(f"--seeds is {seeds}; it must be at least 1")
    epochs = dict(QUICK_EPOCHS if quick else FULL_EPOCHS)
    epochs.update(kwargs.pop("epochs", {}))
    return Settings(quick=quick, seeds=seeds, epochs=epochs, **kwargs)


@dataclass
class TrainedRun:
    """A trained run and its statistics over the test split."""

    name: str
    seed: int
    run: Run
    stats: LatentStatistics
    trace: Trace
    metrics: list[dict[str, float]]
    reused: bool
    train_seconds: float  # summed epoch times recorded in the run


@dataclass
class Step:
    id: str
    title: str
    run: Callable[[Context], None]


class Context:
    """What steps share: settings, output folder, dataset, runs, results, figures and sections."""

    def __init__(self, settings: Settings, out: Path, dataset: Dataset, log: Callable[[str], None]) -> None:
        self.settings = settings
        self.out = out
        self.dataset = dataset
        self.log = log
        self.results: dict[str, Any] = {}
        self.sections: list[Section] = []
        self._runs: dict[tuple[str, int], TrainedRun] = {}

    @property
    def seeds(self) -> list[int]:
        return list(range(self.settings.seeds))

    def config_for(self, preset: str, seed: int, epochs: int | None = None,
                   overrides: tuple[str, ...] = ()) -> Config:
        cfg = config_mod.resolve(preset, overrides=[*self.settings.overrides, *overrides],
                                 **{"data.source": self.settings.data_source})
        return config_mod.replace(cfg, **{"train.seed": seed,
                                          "train.epochs": epochs or self.settings.epochs_for(preset)})

    def trained(self, preset: str, seed: int, epochs: int | None = None, overrides: tuple[str, ...] = (),
                name: str | None = None) -> TrainedRun:
        """The run ``DIR/runs/<name>-seed<seed>`` of ``preset``: reused when its stored config
        matches, resumed when it was interrupted, (re)trained otherwise."""
        name = name or preset
        key = (name, seed)
        cfg = self.config_for(preset, seed, epochs, overrides)
        cached = self._runs.get(key)
        if cached is not None and cached.run.config == cfg:
            return cached
        run_dir = self.out / "runs" / f"{name}-seed{seed}"
        reused = _prepare(run_dir, cfg, self.log)
        if not reused:
            self.log(f"training {name} seed {seed} ({cfg.train.epochs} epochs) -> {run_dir}")
            train_run(cfg, run_dir, resume=True, dataset=self.dataset, progress=self.settings.progress,
                      log=self.log)
        run = load_run(run_dir)
        stats = run_statistics(run, "test", dataset=self.dataset)
        timing = run_dir / "timing.csv"
        seconds = sum(float(line.split(",")[1]) for line in timing.read_text().splitlines()[1:]) \
            if timing.is_file() else 0.0
        trained = TrainedRun(name, seed, run, stats, read_trace(run_dir), read_metrics(run_dir), reused, seconds)
        self.log(f"{name} seed {seed}: {stats.inactive_count}/{stats.latent_dim} inactive on the test set, "
                 f"max |Var(mu) + mean sigma^2 - 1| = {stats.variance_law_max_abs_dev:.3f}")
        self._runs[key] = trained
        return trained

    def figure(self, fig: Figure, name: str, caption: str = "") -> Image:
        """Save ``fig`` as ``figures/<name>.png`` and return the report block showing it."""
        relative = f"figures/{name}.png"
        save_png(fig, self.out / relative)
        return Image(relative, caption)


def _prepare(run_dir: Path, cfg: Config, log: Callable[[str], None]) -> bool:
    """True when ``run_dir`` holds a finished run of ``cfg``. A run with another config is removed
    (it lives inside reproduce's own output folder); an unfinished one of ``cfg`` is resumed."""
    stored_path = run_dir / CONFIG_FILE
    if not stored_path.is_file():
        if run_dir.exists() and any(run_dir.iterdir()):
            shutil.rmtree(run_dir)  # a run killed before its config was written
        return False
    stored = read_json(stored_path, "run config")
    if stored != cfg.to_dict():
        changed = sorted(_diff(stored, cfg.to_dict()))
        log(f"{run_dir} was trained with a different config ({', '.join(changed[:4])}); retraining")
        shutil.rmtree(run_dir)
        return False
    if (run_dir / WEIGHTS_FILE).is_file():
        log(f"reusing {run_dir} (same config)")
        return True
    return False


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def default_steps(settings: Settings) -> list[Step]:
    """The steps of every module in :data:`STEP_MODULES`, in order."""
    steps: list[Step] = []
    for module_name in STEP_MODULES:
        steps.extend(importlib.import_module(module_name).steps(settings))
    return steps


def reproduce(settings: Settings, out: str | Path, steps: list[Step] | None = None,
              dataset: Dataset | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every step, then write ``results.json``, ``report.html`` and ``report.md`` into ``out``.

    ``results.json`` is also rewritten after each step, so an interrupted run keeps what it measured.
    Returns the results.
    """
    say = log or (lambda line: tqdm.write(line))
    out = Path(out)
    started = time.perf_counter()
    steps = default_steps(settings) if steps is None else steps
    say(f"vaescope reproduce ({settings.mode}, {settings.seeds} seed(s)) -> {out}")
    data = dataset if dataset is not None else load_dataset(settings.data_source)
    ctx = Context(settings, out, data, say)
    ctx.results.update({
        "mode": settings.mode,
        "seeds": ctx.seeds,
        "dataset": data.name,
        "split": "test",
        "epochs": dict(settings.epochs),
    })
    step_seconds: dict[str, float] = {}
    for k, step in enumerate(steps, 1):
        say(f"[{k}/{len(steps)}] {step.title}")
        t0 = time.perf_counter()
        step.run(ctx)
        step_seconds[step.id] = round(time.perf_counter() - t0, 2)
        ctx.results["timing"] = {"step_seconds": step_seconds}
        atomic_write_json(out / "results.json", ctx.results)
    total = time.perf_counter() - started
    ctx.results["timing"] = {"step_seconds": step_seconds, "total_seconds": round(total, 1),
                             "machine": _machine()}
    atomic_write_json(out / "results.json", ctx.results)
    html_path, _ = write_report(out, "vaescope: reproducing the seed's results on sparsity, the variance law and the KL term",
                                ctx.sections, _intro(ctx, total))
    say(f"wrote {html_path}, {out / 'report.md'} and {out / 'results.json'} in {total:.0f} s")
    return ctx.results


def _machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def _intro(ctx: Context, seconds: float) -> list[Paragraph]:
    s = ctx.settings
    epochs = ", ".join(f"{k} {v}" for k, v in s.epochs.items())
    reused = sum(r.reused for r in ctx._runs.values())
    return [Paragraph(
        f"Mode **{s.mode}**: {s.seeds} seed(s) per model ({', '.join(map(str, ctx.seeds))}); epochs: {epochs}. "
        f"Dataset `{ctx.dataset.name}`; every statistic is over the test split "
        f"({len(ctx.dataset.x_test)} images) unless a section says otherwise. "
        f"Took {seconds:.0f} s on {_machine()}"
        f"{f', reusing {reused} of {len(ctx._runs)} trained runs' if reused else ''}. "
        "Every number shown is in `results.json`."
    )]
