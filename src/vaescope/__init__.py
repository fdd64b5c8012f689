"""vaescope: train Variational Autoencoders and measure every latent variable.

The Python API::

    run = vaescope.load_run("runs/dense16-seed0")       # model + config of a trained run
    data = vaescope.load_dataset("mnist")               # train/test arrays
    stats = vaescope.latent_statistics(run.model, data.x_test)

Any VAE (a module with encode/decode, a Normal-returning encoder, a pythae model, two functions)
goes through ``vaescope.as_latent_model``; ``vaescope.LatentMonitor`` watches one while it trains,
``vaescope.inspect`` writes a report on one; ``vaescope.LatentStatisticsMetric`` (torchmetrics) gives
the same statistics from encodings a training step already holds.
"""

from typing import Any

from vaescope.core.config import Config
from vaescope.core.errors import VaescopeError
from vaescope.data.dataset import Dataset
from vaescope.data.sources import load_dataset
from vaescope.measures.statistics import LatentStatistics, latent_statistics
from vaescope.models.adapters import as_latent_model
from vaescope.runs.checkpoint import Run, load_run

__all__ = ["Config", "Dataset", "LatentMonitor", "LatentStatistics", "LatentStatisticsMetric", "Run", "VaescopeError",
           "as_latent_model",
           "criteria_table", "importance_weighted_bound", "inspect", "latent_statistics", "load_dataset", "load_run",
           "mutual_information", "sweep"]

_LAZY = {"LatentMonitor": "integrations.monitor", "inspect": "inspection",  # these import matplotlib / the run files
         "sweep": "sweeps.execute",  # its report draws figures (matplotlib): `vaescope train` should not wait for that
         "mutual_information": "measures.information", "importance_weighted_bound": "measures.bound",
         "criteria_table": "measures.criteria",
         "LatentStatisticsMetric": "integrations.metric"}  # imports torchmetrics, an optional extra


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'vaescope' has no attribute {name!r}")
__version__ = "0.1.0"
