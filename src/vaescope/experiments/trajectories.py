"""Trajectories in a 2-D latent space (the KL article, Figures 1 and 2).

A 2-D VAE is trained from scratch. Over the first ``record_epochs`` epochs, every
``record_every`` minibatches, we encode a fixed set of test digits (one per class by default)
and record their mu and sigma^2: the paths they follow while the latent space organises itself.
Then, with a model trained for ``epochs`` epochs (a ``vaescope train`` run of the same config),
we encode more digits (six per class) for a snapshot of the final layout.
The KL article draws each digit as a circle of area ~ r^2 = sqrt(sigma_1^2 sigma_2^2), the geometric
mean of the two variances; it starts near 1 (the prior) and shrinks fast.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from vaescope.core.config import Config
from vaescope.core.device import select_device
from vaescope.core.errors import VaescopeError
from vaescope.data.batches import as_float, images_to_device
from vaescope.data.dataset import Dataset
from vaescope.training.engine import prepare_training, train_epoch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrajectorySettings:
    # Epochs during which the tracked digits are recorded (the KL article's video: the first one).
    record_epochs: int = 1
    # Minibatches between two recordings.
    record_every: int = 5
    # Epochs of the model whose snapshot of digits is shown (the KL article: 10).
    epochs: int = 10
    tracked_per_class: int = 1
    final_per_class: int = 6
    # Picks the digits (the model's initialisation and data order come from train.seed).
    seed: int = 0


@dataclass
class TrajectoryResult:
    steps: np.ndarray          # (T,) minibatches trained when each frame was recorded
    mu: np.ndarray             # (T, K, 2) codes of the K tracked digits
    sigma2: np.ndarray         # (T, K, 2) their posterior variances
    labels: np.ndarray         # (K,) classes of the tracked digits
    final_mu: np.ndarray       # (M, 2) codes of the snapshot digits after ``epochs`` epochs (M = 0: none yet)
    final_sigma2: np.ndarray   # (M, 2)
    final_labels: np.ndarray   # (M,)
    steps_per_epoch: int
    epochs: int                # of the snapshot model
    seconds: float             # spent recording

    @property
    def sigma2_mean_start(self) -> float:
        """Mean sigma^2 of the tracked digits (over digits and both variables) before training."""
        return float(self.sigma2[0].mean())

    @property
    def sigma2_mean_end(self) -> float:
        """The same at the last recorded frame (end of the recorded epochs)."""
        return float(self.sigma2[-1].mean())

    @property
    def sigma2_mean_final(self) -> float | None:
        """Mean sigma^2 of the snapshot digits after ``epochs`` epochs (None without a snapshot)."""
        return float(self.final_sigma2.mean()) if len(self.final_sigma2) else None

    def summary(self) -> dict[str, Any]:
        return {
            "frames": len(self.steps),
            "recorded_steps": int(self.steps[-1]),
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "sigma2_mean_start": self.sigma2_mean_start,
            "sigma2_mean_end": self.sigma2_mean_end,
            "sigma2_mean_final": self.sigma2_mean_final,
            "seconds": self.seconds,
        }


def pick_per_class(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` random examples of every class in ``labels`` ``(N,)``, grouped by class."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        if len(where) < per_class:
            raise VaescopeError(f"class {c} has only {len(where)} test examples, {per_class} are needed")
        picked.append(np.sort(rng.choice(where, per_class, replace=False)))
    return np.concatenate(picked)


@torch.no_grad()
def _encode(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    mu, logvar = model.encode(as_float(x))
    return mu.double().cpu().numpy(), logvar.double().exp().cpu().numpy()


def record_trajectories(config: Config, dataset: Dataset,
                        settings: TrajectorySettings = TrajectorySettings()) -> TrajectoryResult:
    """Train the 2-D VAE ``config`` describes on ``dataset`` for ``settings.record_epochs`` epochs,
    recording the tracked digits; the snapshot fields stay empty (see :func:`add_final_layout`).

    The model is initialised, shuffled and sampled exactly as ``vaescope train`` does it, so the
    paths are those of the first epochs of a ``vaescope train`` run with the same config.
    """
    if config.model.latent_dim != 2:
        raise VaescopeError(f"trajectories need a 2-D latent space, model.latent_dim is "
                            f"{config.model.latent_dim}; use the dense2 preset")
    labels = _labels(dataset)
    started = time.perf_counter()
    t_cfg = config.train
    device = select_device(t_cfg.device)
    x_train = images_to_device(dataset.x_train, device)
    tracked_index = pick_per_class(labels, settings.tracked_per_class, settings.seed)
    tracked = images_to_device(dataset.x_test[tracked_index], device)

    setup = prepare_training(config, dataset.image_shape, device)  # as vaescope.training.train does
    model, optimizer, shuffle, noise = setup.model, setup.optimizer, setup.shuffle, setup.noise
    steps_per_epoch = math.ceil(len(x_train) / t_cfg.batch_size)
    last = settings.record_epochs * steps_per_epoch

    steps, mus, sigma2s = [], [], []

    def record(step: int) -> None:
        mu, sigma2 = _encode(model, tracked)
        steps.append(step)
        mus.append(mu)
        sigma2s.append(sigma2)

    def on_step(step: int, _: dict[str, torch.Tensor]) -> None:
        if step % settings.record_every == 0 or step == last:
            record(step)

    record(0)
    step = 0
    for epoch in range(settings.record_epochs):
        t0 = time.perf_counter()
        step, means = train_epoch(model, optimizer, x_train, config.loss, t_cfg.batch_size, shuffle, noise,
                                  step, on_step=on_step)
        log.info(f"trajectories: epoch {epoch + 1}/{settings.record_epochs} recorded ({len(steps)} frames)  "
            f"{time.perf_counter() - t0:4.1f}s  loss {means['loss']:.2f}")
    empty = np.zeros((0, 2))
    return TrajectoryResult(
        steps=np.array(steps), mu=np.stack(mus), sigma2=np.stack(sigma2s),
        labels=np.asarray(labels[tracked_index]),
        final_mu=empty, final_sigma2=empty, final_labels=np.zeros(0, dtype=np.int64),
        steps_per_epoch=steps_per_epoch, epochs=0, seconds=time.perf_counter() - started,
    )


def add_final_layout(result: TrajectoryResult, model: torch.nn.Module, dataset: Dataset, epochs: int,
                     settings: TrajectorySettings = TrajectorySettings()) -> TrajectoryResult:
    """``result`` with the snapshot of ``settings.final_per_class`` test digits per class encoded
    by ``model``, a 2-D VAE trained for ``epochs`` epochs."""
    labels = _labels(dataset)
    index = pick_per_class(labels, settings.final_per_class, settings.seed + 1)
    device = next(model.parameters()).device
    model.eval()
    mu, sigma2 = _encode(model, images_to_device(dataset.x_test[index], device))
    return replace(result, final_mu=mu, final_sigma2=sigma2, final_labels=np.asarray(labels[index]),
                   epochs=epochs)


def _labels(dataset: Dataset) -> np.ndarray:
    if dataset.y_test is None:
        raise VaescopeError("trajectories pick digits by class; use a dataset with test labels")
    return np.asarray(dataset.y_test)
