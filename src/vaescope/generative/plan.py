"""The runs of the objectives table: each objective on dense16 and conv16, a few seeds, and how
large the table's measures are (:class:`TableSettings`; :func:`table_settings` for the command)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vaescope.core import config as config_mod
from vaescope.core.config import Config
from vaescope.generative.samplers import SamplerSettings
from vaescope.training.two_stage import SecondStageSettings

# The objectives, by preset suffix: what each row of the table trains.
OBJECTIVES: dict[str, str] = {
    "": "ELBO, Bernoulli decoder",
    "_gaussian": "ELBO, Gaussian decoder, fixed variance 1/2",
    "_balanced": "balanced (Asperti & Trentin 2020)",
    "_sigma": "optimal variance (sigma-VAE)",
    "_learned_sigma": "learned variance (sigma-VAE)",
}
ARCHITECTURES = ("dense16", "conv16")
# The rows the summary compares: balancing against each plain ELBO (the Bernoulli one and the Gaussian
# one of fixed variance, the same decoder family as the balanced objective).
BALANCED, PLAIN_ELBOS = "_balanced", ("", "_gaussian")


@dataclass(frozen=True)
class TableSettings:
    """How large the table is: epochs per architecture, seeds, the data; ``overrides`` (``KEY=VALUE``)
    set on every run after its preset (tests give tiny models). The measures: ``samples`` generated
    images of each sampler scored against the first ``samples`` test images (``nearest_k`` neighbours
    for precision/recall/density/coverage); the importance-weighted bound with ``bound_k`` samples on
    the first ``bound_images`` test images; the samplers' fits (``sampler``)."""

    dense_epochs: int = 10
    conv_epochs: int = 4
    seeds: int = 3
    data_source: str = "mnist"
    architectures: tuple[str, ...] = ARCHITECTURES
    overrides: tuple[str, ...] = ()
    samples: int = 5000
    nearest_k: int = 5
    bound_k: int = 100
    bound_images: int = 1000
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    mode: str = "full"

    def measure_key(self) -> dict[str, Any]:
        """What a run's measures depend on beyond the run itself: equal keys, reusable measures."""
        return {"samples": self.samples, "nearest_k": self.nearest_k, "bound_k": self.bound_k,
                "bound_images": self.bound_images, "data_source": self.data_source,
                "sampler": {kind: self.sampler.key(kind) for kind in ("gmm", "two-stage")}}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["architectures"], out["overrides"] = list(self.architectures), list(self.overrides)
        out["sampler"] = {"gmm": self.sampler.key("gmm"), "two-stage": self.sampler.key("two-stage")}
        return out


# --quick: a few minutes on two cores, for trying the command (one seed, 2 / 1 epochs, 1,000 samples,
# a 20-component mixture and the second stage on 2,000 codes, the bound on 200 digits). The second stage
# keeps the full setting's ~400 steps (50 epochs of 8 batches): with 40 it had learned nothing (its
# gamma^2 stayed above 1) and its samples sat at the codes' mean (recall 0.002 on conv16).
QUICK = TableSettings(dense_epochs=2, conv_epochs=1, seeds=1, samples=1000, bound_images=200,
                      sampler=SamplerSettings(components=20, codes=2000,
                                              second_stage=SecondStageSettings(epochs=50)), mode="quick")


def table_settings(quick: bool = False, seeds: int | None = None, data_source: str | None = None) -> TableSettings:
    """The full table's settings (or :data:`QUICK`), with ``seeds`` and ``data_source`` when given."""
    settings = QUICK if quick else TableSettings()
    changes = {k: v for k, v in (("seeds", seeds), ("data_source", data_source)) if v is not None}
    return replace(settings, **changes)


@dataclass(frozen=True)
class TableRun:
    architecture: str
    objective: str  # a key of OBJECTIVES
    seed: int
    config: Config
    directory: Path


def table_runs(settings: TableSettings, root: Path) -> list[TableRun]:
    """Every run of the table, in row order (architecture, objective, seed), under ``root/runs``."""
    runs = []
    for architecture in settings.architectures:
        epochs = settings.dense_epochs if architecture.startswith("dense") else settings.conv_epochs
        for suffix in OBJECTIVES:
            preset = architecture + suffix
            for seed in range(settings.seeds):
                config = config_mod.resolve(preset, overrides=list(settings.overrides), **{
                    "data.source": settings.data_source, "train.epochs": epochs, "train.seed": seed})
                runs.append(TableRun(architecture, suffix, seed, config, root / "runs" / f"{preset}-seed{seed}"))
    return runs
