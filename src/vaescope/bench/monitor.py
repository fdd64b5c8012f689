"""What the LatentMonitor costs a training loop: a record timed alone, and a loop with and without it."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vaescope.core import config as config_mod
from vaescope.core.device import cpu_settings
from vaescope.data.batches import images_to_device
from vaescope.data.sources import load_dataset
from vaescope.integrations.monitor import DEFAULT_EVERY, LatentMonitor
from vaescope.training.engine import prepare_training, train_epoch


def measure_overhead(steps: int = 600, every: int = DEFAULT_EVERY, probe_size: int = 1000, repeats: int = 3,
                     threads: int = 2, dataset: Any = "mnist", tensorboard: bool = True,
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Cost of a :class:`LatentMonitor` on vaescope's dense16 training loop (for ``vaescope bench``).

    Trains dense16 for ``steps`` steps of 128 images with the monitor off and on (``every``,
    ``probe_size`` test images, TensorBoard on or off), ``repeats`` interleaved rounds, and times
    ``record`` alone. Returns medians: ``step_ms_off``, ``step_ms_on``, ``overhead`` (on/off - 1),
    ``record_ms`` and ``predicted_overhead`` = record_ms / (every * step_ms_off), which is steadier
    than the difference of two noisy loops. Time it on an otherwise idle machine.
    """

    say = log or (lambda _: None)
    data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    config = config_mod.resolve("dense16")
    batch = config.train.batch_size
    device = torch.device("cpu")
    results: dict[str, list[float]] = {"off": [], "on": [], "record": []}
    with cpu_settings(threads), tempfile.TemporaryDirectory() as tmp:
        setup = prepare_training(config, data.image_shape, device)
        x = images_to_device(data.x_train[: steps * batch], device)
        monitor = LatentMonitor(setup.model, data.x_test[:probe_size], every=every, log_dir=tmp,
                                tensorboard=tensorboard)
        step = 0

        def run(on_step: Any) -> float:
            nonlocal step
            started = time.perf_counter()
            step, _ = train_epoch(setup.model, setup.optimizer, x, config.loss, batch, setup.shuffle, setup.noise,
                                  step, on_step=on_step)
            return (time.perf_counter() - started) / math.ceil(len(x) / batch)

        run(None)  # warm-up: allocator, kernels, thread pools
        for r in range(repeats):
            order = [("off", None), ("on", lambda s, _: monitor.step(s))]
            for name, hook in order[r % 2:] + order[: r % 2]:
                results[name].append(run(hook))
            started = time.perf_counter()
            for _ in range(10):
                monitor.record(step)
            results["record"].append((time.perf_counter() - started) / 10)
            say(f"round {r + 1}/{repeats}: step off {1e3 * results['off'][-1]:.2f} ms, on "
                f"{1e3 * results['on'][-1]:.2f} ms, record {1e3 * results['record'][-1]:.2f} ms")
        monitor.close()
    off, on, record = (float(np.median(results[k])) for k in ("off", "on", "record"))
    return {"steps": len(x) // batch, "every": every, "probe_size": min(probe_size, len(data.x_test)),
            "tensorboard": tensorboard, "threads": threads, "repeats": repeats,
            "step_ms_off": 1e3 * off, "step_ms_on": 1e3 * on, "overhead": on / off - 1.0,
            "record_ms": 1e3 * record, "predicted_overhead": record / (every * off)}

