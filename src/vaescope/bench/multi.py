"""Many models at once against the same models one after the other: seconds per model-epoch."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vaescope.core import config as config_mod
from vaescope.core.config import Config
from vaescope.core.errors import VaescopeError
from vaescope.data.dataset import Dataset, check_dataset
from vaescope.data.sources import load_dataset
from vaescope.training.multi import DEFAULT_WORKER_KIND, default_workers, train_many
from vaescope.training.train import train
from vaescope.training.workers import start_processes

log = logging.getLogger(__name__)


def multi_model_benchmark(config: Config | None = None, models: int = 6, rounds: int = 3,
                          dataset: Dataset | None = None,
                          contenders: Sequence[str] = ("together", "together_in_process", "apart")) -> dict[str, Any]:
    """Seconds per model-epoch of ``models`` seeds of ``config`` (default: the dense16 preset for 4
    epochs, the trace as dense as a 10-epoch run's), whole runs (test metrics, trace, checkpoints,
    final files) into fresh directories, ``rounds`` interleaved rounds, medians. Contenders:
    "together" ``train_many`` as it chooses (:func:`default_workers`: worker threads on the CPU),
    "together_in_process" ``train_many(workers=1)``, "together_threads" and "together_processes" its
    workers of each kind (:mod:`vaescope.training.workers`; the process pool started once, before the
    first round, as a command pays it once), "apart" ``train`` one run after the other,
    "apart_workers" one model per stack in ``train_many``'s worker threads. ``speedup``: apart / together.
    Takes ~2 s per model-epoch per contender and round on an idle 2-core machine."""
    import statistics
    import tempfile

    if config is None:
        config = config_mod.resolve("dense16", overrides=["train.epochs=4", "train.trace_every=16"])
    data = check_dataset(dataset) if dataset is not None else load_dataset(config.data.source, config.data.max_bytes)
    seeds = [config_mod.replace(config, **{"train.seed": config.train.seed + i}) for i in range(models)]

    def apart(outs: list[Path]) -> None:
        for seed_config, out in zip(seeds, outs):
            train(seed_config, out, dataset=data, progress=False)

    known: dict[str, Callable[[list[Path]], Any]] = {
        "together": lambda outs: train_many(seeds, outs, dataset=data, progress=False),
        "together_in_process": lambda outs: train_many(seeds, outs, dataset=data, progress=False, workers=1),
        "together_threads": lambda outs: train_many(seeds, outs, dataset=data, progress=False, worker_kind="threads"),
        "together_processes": lambda outs: train_many(seeds, outs, dataset=data, progress=False,
                                                      worker_kind="processes"),
        "apart": apart,
        "apart_workers": lambda outs: train_many(seeds, outs, dataset=data, progress=False, max_models=1),
    }
    unknown = sorted(set(contenders) - set(known))
    together = "together" if "together" in contenders else f"together_{DEFAULT_WORKER_KIND}"
    if unknown or "apart" not in contenders or together not in contenders:
        raise VaescopeError(f"multi_model_benchmark: contenders {list(contenders)}; give 'apart', 'together' (or "
                            f"'{together}') and any of {', '.join(known)}")
    if any(name in ("together_processes", "together") for name in contenders):
        start_processes(default_workers(seeds), 1)  # once, as a command pays it
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    with tempfile.TemporaryDirectory(prefix="vaescope-multi-bench-") as root:
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                outs = [Path(root) / f"{name}-{r}-{i}" for i in range(models)]
                started = time.perf_counter()
                known[name](outs)
                times[name].append((time.perf_counter() - started) / (models * config.train.epochs))
            log.info("round %d/%d: %s", r + 1, rounds, ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    result: dict[str, Any] = {"models": models, "epochs": config.train.epochs, "rounds": rounds,
                              "threads": config.train.threads or os.cpu_count(), "workers": default_workers(seeds)}
    for name, values in times.items():
        result[f"{name}_seconds_per_model_epoch"] = statistics.median(values)
    result["together_seconds_per_model_epoch"] = result[f"{together}_seconds_per_model_epoch"]
    result["worker_kind"] = DEFAULT_WORKER_KIND
    result["speedup"] = result["apart_seconds_per_model_epoch"] / result["together_seconds_per_model_epoch"]
    return result

