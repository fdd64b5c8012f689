"""Whole processes side by side: ``vaescope train`` against pythae's pipeline, imports included.

The epoch benchmark (:mod:`vaescope.bench.suite`) times the loops; a user waits for the whole command:
interpreter start, imports, data loading, per-epoch test metrics and the trace, checkpoints.
Each contender is a fresh ``python`` process timed from outside, the two interleaved round by
round so that load from the rest of the machine hits both alike; medians are reported.
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vaescope.core.errors import VaescopeError

log = logging.getLogger(__name__)

# pythae's TrainingPipeline on the dense16 architecture (784-256-64-32-16, ReLU, Bernoulli decoder
# via sigmoid + BCE, Adam 1e-3, batch 128), MNIST from vaescope's cache as a float array.
PYTHAE_SCRIPT = """
import contextlib, io, logging, sys, tempfile
import numpy as np, torch
from torch import nn
from pythae.models import VAE, VAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder
from pythae.pipelines import TrainingPipeline
from pythae.trainers import BaseTrainerConfig
import vaescope

logging.disable(logging.INFO)
epochs = int(sys.argv[1])
data = vaescope.load_dataset("mnist")
x = data.x_train.astype(np.float32) / 255.0

class Encoder(BaseEncoder):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(),
                                 nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32))
    def forward(self, x):
        mu, logvar = self.net(x).chunk(2, dim=1)
        return ModelOutput(embedding=mu, log_covariance=logvar)

class Decoder(BaseDecoder):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 256),
                                 nn.ReLU(), nn.Linear(256, 784))
    def forward(self, z):
        return ModelOutput(reconstruction=torch.sigmoid(self.net(z)).view(-1, 1, 28, 28))

model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=16, reconstruction_loss="bce"),
            encoder=Encoder(), decoder=Decoder())
with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()), \\
        contextlib.redirect_stderr(io.StringIO()):
    config = BaseTrainerConfig(output_dir=out, num_epochs=epochs, learning_rate=1e-3,
                               per_device_train_batch_size=128, per_device_eval_batch_size=1000, no_cuda=True)
    TrainingPipeline(model=model, training_config=config)(train_data=x, eval_data=data.x_test.astype(np.float32) / 255.0)
"""


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise VaescopeError(f"benchmark process {' '.join(command[:4])} ... failed: {last}")
    return seconds


def whole_process_comparison(epochs: int = 3, rounds: int = 3, include_pythae: bool = True) -> dict[str, Any]:
    """Wall seconds of ``vaescope train --preset dense16 --epochs N`` (per-epoch test metrics, trace
    and checkpoints kept) and of pythae's pipeline for N epochs on the same architecture (with its
    own per-epoch evaluation on the test split), each a fresh process; medians over interleaved rounds.
    ``ratio``: vaescope's time over pythae's (the target: at most 0.5)."""
    try:
        import pythae  # noqa: F401
    except ImportError:
        include_pythae = False
    times: dict[str, list[float]] = {"vaescope": [], "pythae": []} if include_pythae else {"vaescope": []}
    with tempfile.TemporaryDirectory(prefix="vaescope-process-bench-") as root:
        for r in range(rounds):
            order = list(times) if r % 2 == 0 else list(reversed(times))
            for name in order:
                if name == "vaescope":
                    out = Path(root) / f"run{r}"
                    command = [sys.executable, "-m", "vaescope", "train", "--preset", "dense16",
                               "--epochs", str(epochs), "--out", str(out), "--quiet"]
                else:
                    command = [sys.executable, "-c", PYTHAE_SCRIPT, str(epochs)]
                times[name].append(_timed(command))
            log.info("whole process, round %d/%d: %s", r + 1, rounds,
                     ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()))
    medians = {k: statistics.median(v) for k, v in times.items()}
    pythae_s = medians.get("pythae")
    return {"epochs": epochs, "vaescope_s": medians["vaescope"], "pythae_s": pythae_s,
            "ratio_to_pythae": None if pythae_s is None else medians["vaescope"] / pythae_s}
