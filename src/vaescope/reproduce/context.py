"""What the steps of ``vaescope reproduce`` share: settings, the trained runs, typed results.

A step is a function of a :class:`Context`: it trains or reuses the runs it needs
(``ctx.trained(preset, seed)`` or ``ctx.model_runs(preset)``), calls the pure functions of
:mod:`vaescope.experiments`, keeps typed results on the context for later steps (``ctx.gains``,
``ctx.generation``), adds a block to ``results.json`` (``ctx.results``), saves figures
(``ctx.figure``) and appends report sections (``ctx.sections``). Steps report progress through the
``logging`` module (logger ``vaescope``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from vaescope.core import config as config_mod
from vaescope.core.config import Config
from vaescope.core.errors import VaescopeError
from vaescope.data.dataset import Dataset
from vaescope.measures.gains import ReconstructionGain
from vaescope.measures.generation import GenerationCheck
from vaescope.measures.run import run_statistics
from vaescope.measures.statistics import LatentStatistics
from vaescope.reports.figures.common import save_png
from vaescope.reports.html import Image, Section
from vaescope.runs.checkpoint import Run, load_run
from vaescope.runs.files import Trace, discard_other_run, is_finished, read_metrics, read_trace, training_seconds
from vaescope.runs.manifest import verify_run
from vaescope.training.multi import train_many
from vaescope.training.train import train as train_run

log = logging.getLogger(__name__)

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
class ModelRuns:
    """Every seed's run of one model: the numbers the sections compare across seeds."""

    name: str
    runs: list[TrainedRun]

    @property
    def first(self) -> TrainedRun:
        return self.runs[0]

    @property
    def inactive_counts(self) -> list[int]:
        return [r.stats.inactive_count for r in self.runs]

    @property
    def variance_law_deviations(self) -> list[float]:
        return [r.stats.variance_law_max_abs_dev for r in self.runs]

    def to_dict(self, article_count: int | None) -> dict[str, Any]:
        """The ``models.<name>`` block of ``results.json``."""
        return {
            "epochs": self.first.run.config.train.epochs,
            "seeds": [r.seed for r in self.runs],
            "inactive_count": self.inactive_counts,
            "variance_law_max_abs_dev": self.variance_law_deviations,
            "test_loss": [r.metrics[-1]["test_loss"] for r in self.runs],
            "test_reconstruction": [r.metrics[-1]["test_reconstruction"] for r in self.runs],
            "test_kl": [r.metrics[-1]["test_kl"] for r in self.runs],
            "train_seconds": [round(r.train_seconds, 1) for r in self.runs],
            "reused": [r.reused for r in self.runs],
            "article_inactive_count": article_count,
            "first_seed_statistics": self.first.stats.to_dict("test"),
        }


@dataclass(frozen=True)
class PlannedRun:
    """A run a step needs: ``preset`` for ``seed`` (``epochs``: the settings' when None), with
    ``overrides``, stored as ``runs/<name>-seed<seed>`` (``name``: the preset when None)."""

    preset: str
    seed: int
    epochs: int | None = None
    overrides: tuple[str, ...] = ()
    name: str | None = None


@dataclass
class Step:
    """One step of ``reproduce``. ``runs``: the trained runs it reads (``ctx.trained`` with the
    same arguments), declared so that the "train" step trains every step's runs together."""

    id: str
    title: str
    run: Callable[[Context], None]
    runs: Callable[[Context], list[PlannedRun]] | None = None


class Context:
    """What steps share: settings, output folder, dataset, runs, results, figures and sections."""

    def __init__(self, settings: Settings, out: Path, dataset: Dataset) -> None:
        self.settings = settings
        self.out = out
        self.dataset = dataset
        self.results: dict[str, Any] = {}  # -> results.json
        self.sections: list[Section] = []
        # Typed results that later steps read.
        self.gains: dict[str, ReconstructionGain] = {}
        self.generation: dict[str, GenerationCheck] = {}
        self._runs: dict[tuple[str, int], TrainedRun] = {}
        self._trained_now: set[Path] = set()  # trained by train_together in this invocation
        self.planned: list[PlannedRun] = []  # every step's declared runs (set by the runner)

    @property
    def trained_runs(self) -> list[TrainedRun]:
        return list(self._runs.values())

    @property
    def seeds(self) -> list[int]:
        return list(range(self.settings.seeds))

    def config_for(self, preset: str, seed: int, epochs: int | None = None,
                   overrides: tuple[str, ...] = ()) -> Config:
        cfg = config_mod.resolve(preset, overrides=[*self.settings.overrides, *overrides],
                                 **{"data.source": self.settings.data_source})
        return config_mod.replace(cfg, **{"train.seed": seed,
                                          "train.epochs": epochs or self.settings.epochs_for(preset)})

    def train_together(self, specs: Sequence[PlannedRun]) -> None:
        """Train the missing runs of ``specs`` at once with :func:`vaescope.training.multi.train_many`: runs
        that share an architecture (the random seeds of a preset, dense16 and dense16_no_kl) as one
        batched computation, the others side by side in its worker threads, each with its own files."""
        configs, outs = [], []
        for spec in dict.fromkeys(specs):  # a run two steps read, once
            cfg = self.config_for(spec.preset, spec.seed, spec.epochs, spec.overrides)
            run_dir = self.out / "runs" / f"{spec.name or spec.preset}-seed{spec.seed}"
            changed = discard_other_run(run_dir, cfg)  # reproduce owns its runs/ folder
            if changed:
                log.info("%s was trained with a different config (%s); retraining", run_dir,
                         ", ".join(changed[:4]))
            if is_finished(run_dir, cfg) and verify_run(run_dir).intact:
                continue
            configs.append(cfg)
            outs.append(run_dir)
        if configs:
            log.info("training %d runs together where they share an architecture: %s", len(configs),
                     ", ".join(p.name for p in outs))
            train_many(configs, outs, dataset=self.dataset, progress=self.settings.progress)
            self._trained_now.update(outs)

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
        changed = discard_other_run(run_dir, cfg)  # reproduce owns its runs/ folder
        if changed:
            log.info("%s was trained with a different config (%s); retraining", run_dir, ", ".join(changed[:4]))
        # reused only when its files match their manifest; otherwise resumed, which writes them again
        just_trained = run_dir in self._trained_now
        reused = not just_trained and is_finished(run_dir, cfg) and verify_run(run_dir).intact
        if reused:
            log.info("reusing %s (same config)", run_dir)
        elif not just_trained:
            log.info("training %s seed %d (%d epochs) -> %s", name, seed, cfg.train.epochs, run_dir)
            train_run(cfg, run_dir, resume=True, dataset=self.dataset, progress=self.settings.progress)
        run = load_run(run_dir)
        stats = run_statistics(run, "test", dataset=self.dataset)
        trained = TrainedRun(name, seed, run, stats, read_trace(run_dir), read_metrics(run_dir), reused,
                             training_seconds(run_dir))
        log.info("%s seed %d: %d/%d inactive on the test set, max |Var(mu) + mean sigma^2 - 1| = %.3f",
                 name, seed, stats.inactive_count, stats.latent_dim, stats.variance_law_max_abs_dev)
        self._runs[key] = trained
        return trained

    def run(self, spec: PlannedRun) -> TrainedRun:
        """The run ``spec`` describes (:meth:`trained`)."""
        return self.trained(spec.preset, spec.seed, spec.epochs, spec.overrides, spec.name)

    def model_runs(self, preset: str) -> ModelRuns:
        """The runs of ``preset`` for every seed."""
        return ModelRuns(preset, [self.trained(preset, seed) for seed in self.seeds])

    def figure(self, fig: Figure, name: str, caption: str = "") -> Image:
        """Save ``fig`` as ``figures/<name>.png`` and return the report block showing it."""
        relative = f"figures/{name}.png"
        save_png(fig, self.out / relative)
        return Image(relative, caption)


