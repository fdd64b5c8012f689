"""vaescope: train Variational Autoencoders and measure every latent variable.

The Python API::

    run = vaescope.load_run("runs/dense16-seed0")       # model + config of a trained run
    data = vaescope.load_dataset("mnist")               # train/test arrays
    stats = vaescope.latent_statistics(run.model, data.x_test)
"""

from .checkpoint import Run, load_run
from .config import Config
from .data import Dataset, load_dataset
from .errors import VaescopeError
from .stats import LatentStatistics, latent_statistics

__all__ = ["Config", "Dataset", "LatentStatistics", "Run", "VaescopeError", "latent_statistics",
           "load_dataset", "load_run"]
__version__ = "0.1.0"
