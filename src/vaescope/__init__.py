"""vaescope: train Variational Autoencoders and measure every latent variable.

The Python API::

    run = vaescope.load_run("runs/dense16-seed0")       # model + config of a trained run
    data = vaescope.load_dataset("mnist")               # train/test arrays
    stats = vaescope.latent_statistics(run.model, data.x_test)

Any VAE (a module with encode/decode, a Normal-returning encoder, a pythae model, two functions)
goes through ``vaescope.as_latent_model``; ``vaescope.LatentMonitor`` watches one while it trains,
``vaescope.inspect`` writes a report on one.
"""

from typing import Any

from .adapters import as_latent_model
from .checkpoint import Run, load_run
from .config import Config
from .data import Dataset, load_dataset
from .errors import VaescopeError
from .stats import LatentStatistics, latent_statistics
from .sweep import sweep  # the function: binding it here keeps `vaescope.sweep` callable after the module loads

__all__ = ["Config", "Dataset", "LatentMonitor", "LatentStatistics", "Run", "VaescopeError", "as_latent_model",
           "criteria_table", "importance_weighted_bound", "inspect", "latent_statistics", "load_dataset", "load_run",
           "mutual_information", "sweep"]

_LAZY = {"LatentMonitor": "monitor", "inspect": "inspection",  # these import matplotlib / the run files
         "mutual_information": "measures", "importance_weighted_bound": "measures", "criteria_table": "criteria"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'vaescope' has no attribute {name!r}")
__version__ = "0.1.0"
