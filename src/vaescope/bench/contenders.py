"""The contenders ``vaescope bench`` times side by side, each a function of n examples -> seconds.

- :func:`matmul_contender`: a large float32 matrix product, the yardstick of the machine's limit.
- :func:`vaescope_contender`: :func:`vaescope.training.engine.train_epoch`, the loop behind ``vaescope train``.
- :func:`reference_contender`: the loop most PyTorch code writes (a ``DataLoader`` over a
  ``TensorDataset`` with shuffling, default Adam, ``loss.item()`` every step), same model and loss.
- :func:`pythae_contender`: pythae's ``TrainingPipeline`` on the same dense model (None without pythae).
- :func:`stats_contender`: the statistics pass of ``vaescope stats``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from vaescope.core.config import Config
from vaescope.measures.statistics import latent_statistics
from vaescope.models.networks import build_model
from vaescope.models.objectives import loss_terms
from vaescope.training.engine import prepare_training, train_epoch

log = logging.getLogger(__name__)

STATS_BATCH_SIZE = 2000  # what `vaescope stats` uses (vaescope.measures.run.run_statistics)


# ---------------------------------------------------------------------------- contenders

def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, work: Callable[[], Any]) -> float:
    _synchronize(device)
    started = time.perf_counter()
    work()
    _synchronize(device)
    return time.perf_counter() - started


def matmul_contender(size: int, device: torch.device) -> Callable[[int], float]:
    """Seconds per ``size x size`` float32 product (several back to back where one is quick)."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device) for _ in range(2))
    out = torch.empty_like(a)
    torch.mm(a, b, out=out)
    repeats = max(1, math.ceil(0.2 / _timed(device, lambda: torch.mm(a, b, out=out))))

    def run(_: int) -> float:
        def products() -> None:
            for _ in range(repeats):
                torch.mm(a, b, out=out)
        return _timed(device, products) / repeats

    return run


def vaescope_contender(config: Config, x: torch.Tensor, image_shape: tuple[int, ...]) -> tuple[Callable[[int], float], nn.Module]:
    """One epoch of :func:`train_epoch` over the first n images of ``x`` (uint8 on the device)."""
    setup = prepare_training(config, image_shape, x.device)

    def run(n: int) -> float:
        return _timed(x.device, lambda: train_epoch(setup.model, setup.optimizer, x[:n], config.loss,
                                                    config.train.batch_size, setup.shuffle, setup.noise))

    return run, setup.model


def reference_contender(config: Config, x_float: torch.Tensor, image_shape: tuple[int, ...],
                        device: torch.device, channels_last: bool = False) -> Callable[[int], float]:
    """The common plain-PyTorch epoch: a shuffling DataLoader over a TensorDataset of float
    images (on the CPU, batches moved to ``device``), default Adam, ``loss.item()`` per step.
    ``channels_last``: model and batches in that memory layout (oneDNN's preferred one for convolutions)."""
    t_cfg = config.train
    torch.manual_seed(t_cfg.seed)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(config.model, image_shape).to(device, memory_format=layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=t_cfg.lr)

    def epoch(n: int) -> float:
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_float[:n]),
                                             batch_size=t_cfg.batch_size, shuffle=True)
        model.train()
        running = 0.0
        for (batch,) in loader:
            batch = batch.to(device, memory_format=layout)
            loss = loss_terms(model, batch, config.loss).total
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += loss.item()
        return running

    return lambda n: _timed(device, lambda: epoch(n))


def pythae_contender(config: Config, x_float: np.ndarray, image_shape: tuple[int, ...],
                     device: torch.device) -> Callable[[int], float] | None:
    """One epoch of pythae's ``TrainingPipeline`` with our model inside pythae's VAE (pythae's own
    ELBO: BCE on sigmoid outputs plus the closed-form KL); None when pythae is not installed."""
    try:
        from pythae.models import VAE, VAEConfig
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn import BaseDecoder, BaseEncoder
        from pythae.pipelines import TrainingPipeline
        from pythae.trainers import BaseTrainerConfig
        from pythae.trainers.training_callbacks import TrainingCallback
    except ImportError:
        return None
    for name in list(logging.root.manager.loggerDict):  # pythae logs every epoch at INFO
        if name.startswith("pythae"):
            logging.getLogger(name).setLevel(logging.WARNING)

    t_cfg = config.train
    torch.manual_seed(t_cfg.seed)
    ours = build_model(config.model, image_shape)

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.vae = ours

        def forward(self, x: torch.Tensor) -> Any:
            mu, logvar = self.vae.encode(x)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = ours.decoder

        def forward(self, z: torch.Tensor) -> Any:
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    class EpochTimer(TrainingCallback):
        seconds = math.nan

        def on_epoch_begin(self, training_config: Any, **kwargs: Any) -> None:
            _synchronize(device)
            self.started = time.perf_counter()

        def on_epoch_end(self, training_config: Any, **kwargs: Any) -> None:
            _synchronize(device)
            self.seconds = time.perf_counter() - self.started

    model = VAE(VAEConfig(input_dim=image_shape, latent_dim=config.model.latent_dim, reconstruction_loss="bce"),
                encoder=Encoder(), decoder=Decoder())

    def run(n: int) -> float:
        timer = EpochTimer()
        with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):  # its progress bars and summaries
            trainer_cfg = BaseTrainerConfig(output_dir=workdir, num_epochs=1, learning_rate=t_cfg.lr,
                                            per_device_train_batch_size=t_cfg.batch_size,
                                            no_cuda=device.type != "cuda", seed=t_cfg.seed)
            TrainingPipeline(model=model, training_config=trainer_cfg)(train_data=x_float[:n], callbacks=[timer])
        return timer.seconds

    return run


def stats_contender(model: nn.Module, x: np.ndarray, device: torch.device) -> Callable[[int], float]:
    """The statistics pass of ``vaescope stats``: uint8 images streamed from the host in batches."""
    return lambda n: _timed(device, lambda: latent_statistics(model, x[:n], batch_size=STATS_BATCH_SIZE,
                                                              device=device))
