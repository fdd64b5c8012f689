"""Stacked dense models on one device: how many train together before the throughput stops growing.

On a GPU one dense16 model leaves most of the device idle (a batch of 128 through 784-256-64-32-16
layers is a few microseconds of work per kernel, and the kernel launches dominate), so stacking M
models into one batched computation (:func:`vaescope.training.stacked.stacked_epoch`) should raise
the throughput almost M-fold until the device is busy. :func:`stacking_benchmark` measures it:
one model's epoch with the single-model engine (:func:`vaescope.training.engine.train_epoch`, what
``vaescope train`` runs), then M = 1, 2, 4, ... models stacked, each timed over the same images, as
model-epochs per second and as a speedup over the same M models trained one after the other.
:func:`knee` reads where the growth stops. ``vaescope bench --stacking`` runs it on the CUDA device
when there is one and says that no GPU was measured when there is none; on the CPU it runs only
when asked for a CPU (tests run it on the CPU with tiny data).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from vaescope.core.config import Config, resolve
from vaescope.core.config import replace as replace_config
from vaescope.core.errors import VaescopeError
from vaescope.data.batches import images_to_device
from vaescope.data.dataset import Dataset
from vaescope.data.sources import load_dataset
from vaescope.training.engine import prepare_training, train_epoch
from vaescope.training.stacked import stacked_epoch

log = logging.getLogger(__name__)

STACK_COUNTS = (1, 2, 4, 8, 16, 32, 64)
GROWTH = 1.1  # doubling M must raise the throughput by at least 10% to count as growth


def knee(counts: Sequence[int], throughputs: Sequence[float], growth: float = GROWTH) -> int:
    """The largest count before the throughput stops growing: walking up ``counts`` (ascending),
    the last count whose throughput beat the best one before it by at least ``growth`` times; the
    first count when none does."""
    if not counts or len(counts) != len(throughputs):
        raise VaescopeError(f"knee: {len(counts)} counts and {len(throughputs)} throughputs; give one each, at least one")
    best, at = throughputs[0], counts[0]
    for count, value in zip(counts[1:], throughputs[1:]):
        if value >= growth * best:
            at = count
        best = max(best, value)
    return at


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stacking_benchmark(device: str | torch.device = "cuda", dataset: Dataset | None = None,
                       counts: Sequence[int] = STACK_COUNTS, n_train: int | None = None,
                       rounds: int = 3, config: Config | None = None) -> dict[str, Any]:
    """One model's epoch and M stacked models' epochs on ``device`` over the first ``n_train``
    training images (all when None) of ``dataset`` (MNIST when None), ``config`` the dense16
    preset by default. Each measure is the median of ``rounds`` epochs after one warm-up epoch.

    Returns ``single_epoch_s`` (the single-model engine), and per count ``epoch_s`` (M models
    stacked), ``model_epochs_per_s`` and ``speedup`` (M single epochs over the stacked one), and
    ``knee``: the count past which doubling gains less than :data:`GROWTH`.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VaescopeError("stacking_benchmark: no CUDA device here; give device='cpu' to run it on the CPU")
    if not counts or min(counts) < 1 or list(counts) != sorted(counts):
        raise VaescopeError(f"stacking_benchmark: counts {list(counts)}; give ascending model counts >= 1")
    if rounds < 1:
        raise VaescopeError(f"stacking_benchmark: rounds is {rounds}; give at least 1")
    config = config or resolve("dense16")
    if dataset is None:
        dataset = load_dataset(config.data.source)
    x = dataset.x_train if n_train is None else dataset.x_train[:n_train]
    x_train = images_to_device(x, device)

    def timed(run: Any) -> float:
        run()  # warm-up: kernels chosen, caches filled
        times = []
        for _ in range(rounds):
            _sync(device)
            started = time.perf_counter()
            run()
            _sync(device)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    single = prepare_training(config, dataset.image_shape, device)

    def one_model() -> None:
        train_epoch(single.model, single.optimizer, x_train, config.loss, config.train.batch_size,
                    single.shuffle, single.noise)

    single_s = timed(one_model)
    rows = []
    for m in counts:
        setups = [prepare_training(replace_config(config, **{"train.seed": config.train.seed + i}),
                                   dataset.image_shape, device) for i in range(m)]
        losses = [config.loss] * m

        def together(setups: list = setups, losses: list = losses) -> None:
            stacked_epoch(setups, losses, x_train, config.train.batch_size, config.train.lr, 0)

        epoch_s = timed(together)
        rows.append({"models": m, "epoch_s": epoch_s, "model_epochs_per_s": m / epoch_s,
                     "speedup": m * single_s / epoch_s})
        log.info("%d stacked: %.3f s an epoch, %.2f model-epochs/s", m, epoch_s, m / epoch_s)
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "n_train": len(x_train),
        "rounds": rounds,
        "single_epoch_s": single_s,
        "stacked": rows,
        "knee": knee([r["models"] for r in rows], [r["model_epochs_per_s"] for r in rows]),
    }


def not_measured(reason: str) -> dict[str, Any]:
    """The row's entry where it did not run: ``measured`` False and why."""
    return {"measured": False, "reason": reason}
