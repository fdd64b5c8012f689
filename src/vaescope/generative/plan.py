"""The runs of the objectives table: each objective on dense16 and conv16, a few seeds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vaescope.core import config as config_mod
from vaescope.core.config import Config

# The objectives, by preset suffix: what each row of the table trains.
OBJECTIVES: dict[str, str] = {
    "": "ELBO, Bernoulli decoder",
    "_gaussian": "ELBO, Gaussian decoder, fixed variance 1/2",
    "_balanced": "balanced (Asperti & Trentin 2020)",
    "_sigma": "optimal variance (sigma-VAE)",
    "_learned_sigma": "learned variance (sigma-VAE)",
}
ARCHITECTURES = ("dense16", "conv16")


@dataclass(frozen=True)
class TableSettings:
    """How large the table's training is: epochs per architecture, seeds, the data."""

    dense_epochs: int = 10
    conv_epochs: int = 4
    seeds: int = 3
    data_source: str = "mnist"


@dataclass(frozen=True)
class TableRun:
    architecture: str
    objective: str  # a key of OBJECTIVES
    seed: int
    config: Config
    directory: Path


def table_runs(settings: TableSettings, root: Path) -> list[TableRun]:
    """Every run of the table, in row order (architecture, objective, seed)."""
    runs = []
    for architecture in ARCHITECTURES:
        epochs = settings.dense_epochs if architecture == "dense16" else settings.conv_epochs
        for suffix in OBJECTIVES:
            preset = architecture + suffix
            for seed in range(settings.seeds):
                config = config_mod.resolve(preset, overrides=[f"data.source={settings.data_source}"], **{
                    "train.epochs": epochs, "train.seed": seed})
                runs.append(TableRun(architecture, suffix, seed, config, root / "runs" / f"{preset}-seed{seed}"))
    return runs
