"""``train_many``: many models trained together, each written as an ordinary run directory.

Configs that differ only where parameter shapes stay the same (``train.seed``, ``loss.beta``,
``loss.sampling``, ``train.epochs``, the trace, checkpoint and statistics settings) form a group;
a group of dense models trains as one batched computation (:mod:`vaescope.stacked`). Each model
keeps everything ``vaescope train`` would give it: its initialisation (:func:`prepare_training`
from its own config), its data order and noise (its own two generators), its own Adam state, its
own per-epoch test metrics, trace, checkpoints and final files (the functions of
:mod:`vaescope.train`). Models at different epochs (runs resumed from different checkpoints) train
in cohorts: the ones furthest behind first, joined by the others when they reach them.

A model whose loss or gradient becomes NaN or infinite leaves its group before Adam applies the
step (its weights and last checkpoint stay good) and the others go on; when all are done,
``train_many`` raises the one-line error ``train`` gives for it, naming its run directory.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import logging
import math
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .config import Config
from .data import Dataset, check_dataset, load_dataset
from .engine import as_float, cpu_settings, prepare_training, select_device
from .errors import VaescopeError
from .models import MODEL_KINDS
from .stacked import stacked_epoch
from .storage import directory_lock
from .train import (
    Diverged,
    RunState,
    RunTensors,
    TrainResult,
    claim_run,
    divergence,
    end_epoch,
    finish_run,
    run_tensors,
    start_run,
    trace_interval,
    train_claimed,
)

log = logging.getLogger(__name__)

# Settings that leave a model's parameter shapes, its data and its optimizer's hyper-parameters
# as they are: configs differing only here train together.
PER_MODEL_KEYS = ("name", "stats", "loss.beta", "loss.sampling", "train.seed", "train.epochs",
                  "train.checkpoint_every", "train.trace_every", "train.trace_points", "train.trace_subset")


def group_key(config: Config) -> str:
    """Equal for configs that can train in one batched computation."""
    plain = config.to_dict()
    for dotted in PER_MODEL_KEYS:
        *path, last = dotted.split(".")
        node = plain
        for part in path:
            node = node[part]
        node.pop(last, None)
    return repr(plain)


def batchable(config: Config) -> bool:
    """True when the stacked path trains this config: vaescope's dense model (no factory)."""
    return config.model.kind == "dense" and not config.model.factory and config.model.kind in MODEL_KINDS


def train_many(configs: Sequence[Config], outs: Sequence[str | Path], dataset: Dataset | None = None,
               progress: bool = True, max_models: int = 16, workers: int = 0) -> list[TrainResult]:
    """Train every ``configs[i]`` into ``outs[i]``; compatible configs together (:func:`group_key`),
    at most ``max_models`` per batched computation; the others one by one as ``train`` does.

    ``workers`` > 1: the work is shared by that many spawned worker processes (each group split
    between them), each with ``train.threads`` / ``workers`` threads (at least 1); the models and
    files are the same. ``workers=0`` chooses (:func:`default_workers`): on the CPU, one worker of
    one thread per core, when the runs are long enough to pay for starting them. Each directory follows the run-directory policy with ``resume=True``: a
    finished run of the same config is reused, an unfinished one resumed, a run of another config
    refused (before anything trains). This process holds every directory's lock for the whole
    call. Returns one :class:`~vaescope.train.TrainResult` per config, in order.
    """
    if len(configs) != len(outs):
        raise VaescopeError(f"train_many: {len(configs)} configs but {len(outs)} run directories; give one each")
    if workers < 0 or max_models < 1:
        raise VaescopeError(f"train_many: workers ({workers}) must be at least 0 (0: chosen) and max_models "
                            f"({max_models}) at least 1")
    paths = [Path(o) for o in outs]
    seen: dict[Path, int] = {}
    for i, path in enumerate(paths):
        if path.resolve() in seen:
            raise VaescopeError(f"train_many: {path} is given twice (runs {seen[path.resolve()]} and {i}); "
                                "give each run its own directory")
        seen[path.resolve()] = i
    if dataset is not None:
        dataset = check_dataset(dataset)
    results: list[TrainResult | None] = [None] * len(configs)
    failures: list[str] = []
    with contextlib.ExitStack() as locks:
        runs: list[Run] = []
        for config, path in zip(configs, paths):
            locks.enter_context(directory_lock(path))
            claimed, intact = claim_run(path, config, resume=True)
            runs.append((claimed, path, intact))
        workers = workers or default_workers([config for config, _, _ in runs])
        tasks = plan_tasks([config for config, _, _ in runs], max_models, workers)
        datasets: dict[str, Dataset] = {}
        for config, _, _ in runs:
            if config.data.source not in datasets:
                datasets[config.data.source] = (dataset if dataset is not None
                                                else load_dataset(config.data.source, config.data.max_bytes))
        if workers > 1 and len(tasks) > 1:
            outcomes = _in_workers(tasks, runs, datasets, workers)
        else:
            outcomes = (run_task([runs[i] for i in task], datasets[runs[task[0]][0].data.source],
                                 runs[task[0]][0].train.threads, progress) for task in tasks)
        for task, (done, failed) in zip(tasks, outcomes):
            failures += failed
            for j, result in done.items():
                results[task[j]] = result
    if failures:
        more = f"; and {len(failures) - 1} more run(s) stopped the same way" if len(failures) > 1 else ""
        raise Diverged(failures[0] + more)
    return [r for r in results if r is not None]


Run = tuple[Config, Path, bool]  # a claimed run: its config, its directory, whether its final files are intact

# Starting a worker (spawn, imports, the data sent) costs ~2-4 s here; one worker of one thread
# per core beats one process of all cores by ~0.2 s per model-epoch on an idle 2-core machine (far
# more on a busy one, where intra-op threads wait on each other): worth it from ~10 model-epochs
# per core.
WORKER_MODEL_EPOCHS_PER_CORE = 10


def default_workers(configs: Sequence[Config]) -> int:
    """``train_many``'s choice: on the CPU, one worker process per core (within ``train.threads``,
    at most one per run) when there are at least WORKER_MODEL_EPOCHS_PER_CORE model-epochs per
    core to train; otherwise 1 (this process). An accelerator is driven by this process alone."""
    if not configs or select_device(configs[0].train.device).type != "cpu":
        return 1
    cores = min(configs[0].train.threads or os.cpu_count() or 1, len(configs))
    model_epochs = sum(config.train.epochs for config in configs)
    return cores if cores > 1 and model_epochs >= WORKER_MODEL_EPOCHS_PER_CORE * cores else 1


def plan_tasks(configs: Sequence[Config], max_models: int = 16, workers: int = 1) -> list[list[int]]:
    """The indices of ``configs`` that train together, task by task: each group (:func:`group_key`)
    of batchable configs split into ``workers`` parts (one per worker process) of at most
    ``max_models``; every other config alone."""
    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(group_key(config), []).append(i)
    tasks: list[list[int]] = []
    for indices in groups.values():
        if not batchable(configs[indices[0]]):
            tasks += [[i] for i in indices]
            continue
        parts = [indices[w::workers] for w in range(min(workers, len(indices)))]
        tasks += [part[s : s + max_models] for part in parts for s in range(0, len(part), max_models)]
    return tasks


def run_task(runs: Sequence[Run], data: Dataset, threads: int, progress: bool = True
             ) -> tuple[dict[int, TrainResult], list[str]]:
    """Train one task of :func:`plan_tasks` (locks held by the caller) with ``threads`` threads:
    the results by position, and the one-line errors of the runs that diverged."""
    failures: list[str] = []
    with cpu_settings(threads):
        if len(runs) > 1:
            return train_group(runs, data, progress, failures), failures
        config, out, intact = runs[0]
        try:
            return {0: train_claimed(config, out, True, data, progress, None, intact)}, failures
        except Diverged as err:
            return {}, [f"{out}: {err}"]


_WORKER_DATA: dict[str, Dataset] = {}  # a worker's datasets, by data source


def _worker_init(parent: int, datasets: dict[str, Dataset]) -> None:
    if sys.platform.startswith("linux"):  # die with the parent: its locks go, so must its writers
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)
    logging.getLogger("vaescope").setLevel(logging.WARNING)
    _WORKER_DATA.update(datasets)


def _worker_task(runs: list[Run], threads: int) -> tuple[dict[int, TrainResult], list[str]]:
    return run_task(runs, _WORKER_DATA[runs[0][0].data.source], threads, progress=False)


def _in_workers(tasks: list[list[int]], runs: list[Run], datasets: dict[str, Dataset], workers: int
                ) -> list[tuple[dict[int, TrainResult], list[str]]]:
    """Each task in one of ``workers`` spawned processes (a fresh interpreter: no copy of this
    process's threads or locks), with its share of the threads."""
    log.info("training %d runs in %d worker processes", len(runs), workers)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init, initargs=(os.getpid(), datasets)) as pool:
        futures = []
        for task in tasks:
            config = runs[task[0]][0]
            threads = max(1, (config.train.threads or os.cpu_count() or 1) // workers)
            futures.append(pool.submit(_worker_task, [runs[i] for i in task], threads))
        return [future.result() for future in futures]


# ---------------------------------------------------------------------------- one group

@dataclass(eq=False)
class Member:
    """One model of a group: its run and its trace interval."""

    index: int
    state: RunState
    every: int

    @property
    def name(self) -> str:
        return f"{self.state.out.name}: "


def train_group(runs: Sequence[tuple[Config, Path, bool]], data: Dataset, progress: bool = True,
                failures: list[str] | None = None) -> dict[int, TrainResult]:
    """Train ``runs`` (config, claimed run directory, finished files intact) of one group key
    together; returns the results by position. A diverged run's error is added to ``failures``
    (raised at once when None)."""
    at_once = failures is None
    failures = [] if failures is None else failures
    first = runs[0][0]
    device = select_device(first.train.device)
    tensors = run_tensors(first, data, device)  # the group shares data, hence images; not the trace subset
    n = len(tensors.x_train)
    steps_per_epoch = math.ceil(n / first.train.batch_size)
    results: dict[int, TrainResult] = {}
    members: list[Member] = []
    subsets: dict[int, RunTensors] = {}
    for i, (config, out, intact) in enumerate(runs):
        own = dataclasses.replace(tensors, subset=as_float(tensors.x_test[: config.train.trace_subset].clone()))
        subsets[i] = own
        state = start_run(out, config, prepare_training(config, data.image_shape, device), own.subset, resume=True)
        if state.finished:
            results[i] = state.result() if intact else finish_run(state, data.image_shape, True)
            if intact:
                log.info("%s is already trained (%d epochs)", out, state.epoch)
        else:
            members.append(Member(i, state, trace_interval(config, n)))
    remaining = sum(m.state.config.train.epochs * steps_per_epoch - m.state.step for m in members)
    bar = tqdm(total=remaining, disable=not progress or None, unit="model-step", dynamic_ncols=True, leave=False)
    try:
        while members:
            epoch = min(m.state.epoch for m in members)
            cohort = [m for m in members if m.state.epoch == epoch]
            bar.set_description(f"{len(cohort)} models, epoch {epoch + 1}")

            def on_step(step: int, alive: list[int], sync: Callable[[], None], cohort: list[Member] = cohort) -> None:
                traced = [cohort[i] for i in alive if step % cohort[i].every == 0]
                if traced:
                    sync()  # the stacked weights into the models the trace measures
                    for member in traced:
                        member.state.trace.record(member.state.setup.model, subsets[member.index].subset, step,
                                                  step / steps_per_epoch)
                bar.update(len(alive))

            started = time.perf_counter()
            step, means, diverged = stacked_epoch(
                [m.state.setup for m in cohort], [m.state.config.loss for m in cohort], tensors.x_train,
                first.train.batch_size, first.train.lr, cohort[0].state.step,
                binarize=first.data.binarize == "dynamic", on_step=on_step)
            share = (time.perf_counter() - started) / len(cohort)  # each model's share of the epoch
            for i, member in enumerate(cohort):
                if i in diverged:
                    failures.append(f"{member.state.out}: {divergence(member.state.out, epoch + 1, diverged[i])}")
                    members.remove(member)
                    if at_once:
                        raise Diverged(failures[-1])
                    continue
                member.state.step = step
                end_epoch(member.state, subsets[member.index], means[i], share, member.name)
                if member.state.finished:
                    results[member.index] = finish_run(member.state, data.image_shape, False)
                    members.remove(member)
    finally:
        bar.close()
    return results


# ---------------------------------------------------------------------------- benchmark

def multi_model_benchmark(config: Config | None = None, models: int = 6, rounds: int = 3,
                          dataset: Dataset | None = None,
                          contenders: Sequence[str] = ("together", "together_in_process", "apart")) -> dict[str, Any]:
    """Seconds per model-epoch of ``models`` seeds of ``config`` (default: the dense16 preset for 4
    epochs, the trace as dense as a 10-epoch run's), whole runs (test metrics, trace, checkpoints,
    final files) into fresh directories, ``rounds`` interleaved rounds, medians. Contenders:
    "together" ``train_many`` as it chooses (:func:`default_workers`; the workers' start included),
    "together_in_process" ``train_many(workers=1)``, "apart" ``train`` one run after the other,
    "apart_workers" one run per task in ``train_many``'s workers. ``speedup``: apart / together.
    Takes ~2 s per model-epoch per contender and round on an idle 2-core machine."""
    import statistics
    import tempfile

    from . import config as config_mod
    from .train import train
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
        "apart": apart,
        "apart_workers": lambda outs: train_many(seeds, outs, dataset=data, progress=False, max_models=1),
    }
    unknown = sorted(set(contenders) - set(known))
    if unknown or "apart" not in contenders or "together" not in contenders:
        raise VaescopeError(f"multi_model_benchmark: contenders {list(contenders)}; give 'together', 'apart' and "
                            f"any of {', '.join(known)}")
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
    result["speedup"] = result["apart_seconds_per_model_epoch"] / result["together_seconds_per_model_epoch"]
    return result
