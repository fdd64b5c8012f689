"""``train_many``: many models trained together, each written as an ordinary run directory.

Configs that differ only where parameter shapes stay the same (``train.seed``, ``loss.beta``,
``loss.sampling``, ``train.epochs``, the trace, checkpoint and statistics settings) form a group;
a group of dense models trains as one batched computation (:mod:`vaescope.training.stacked`). Each model
keeps everything ``vaescope train`` would give it: its initialisation (:func:`prepare_training`
from its own config), its data order and noise (its own two generators), its own Adam state, its
own per-epoch test metrics, trace, checkpoints and final files (the functions of
:mod:`vaescope.training.train`). Models at different epochs (runs resumed from different checkpoints) train
in cohorts: the ones furthest behind first, joined by the others when they reach them.

On the CPU a group is split between workers (threads or spawned processes:
:mod:`vaescope.training.workers`), one per core, each driving its part with one intra-op thread:
that avoids the waits of intra-op threads on small kernels, which on a machine shared with other
jobs cost several times the epoch. Models
that cannot be stacked (convolutional ones, your own) train one per task in the same threads;
the costliest tasks start first. A model's
``timing.csv`` holds its share of each batched epoch (the epoch's wall time / the models in it).

A model whose loss or gradient becomes NaN or infinite leaves its group before Adam applies the
step (its weights and last checkpoint stay good) and the others go on; when all are done,
``train_many`` raises the one-line error ``train`` gives for it, naming its run directory: a
re-run then reuses the finished runs and stops the same way only for that one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from vaescope.core.config import Config
from vaescope.core.device import cpu_settings, select_device
from vaescope.core.errors import VaescopeError
from vaescope.core.randomness import global_rng_kept
from vaescope.core.storage import directory_lock
from vaescope.data.batches import as_float
from vaescope.data.dataset import Dataset, check_dataset
from vaescope.data.sources import load_dataset
from vaescope.measures.statistics import latent_statistics
from vaescope.models.networks import MODEL_KINDS, build_model
from vaescope.training.cost import training_flops_per_example
from vaescope.training.engine import prepare_training
from vaescope.training.stacked import stacked_epoch
from vaescope.training.train import (
    Diverged,
    RunState,
    RunTensors,
    Stopped,
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
from vaescope.training.workers import run_in_workers

log = logging.getLogger(__name__)

DEFAULT_WORKER_KIND = "threads"

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
               progress: bool = True, max_models: int = 16, workers: int = 0,
               worker_kind: str | None = None) -> list[TrainResult]:
    """Train every ``configs[i]`` into ``outs[i]``; compatible configs together (:func:`group_key`),
    at most ``max_models`` per batched computation; the others one by one as ``train`` does.

    ``workers`` > 1 (on the CPU): the groups are split between that many workers, each training
    its part with one intra-op thread; ``workers=0`` chooses (:func:`default_workers`).
    ``worker_kind``: "threads" of this process or spawned "processes"
    (:mod:`vaescope.training.workers`); None: :data:`DEFAULT_WORKER_KIND`. The models and files do not depend
    on it. Each directory follows the run-directory policy with ``resume=True``: a finished run of
    the same config is reused, an unfinished one resumed, a run of another config refused (before
    anything trains). The directories stay locked for the whole call. Returns one
    :class:`~vaescope.training.train.TrainResult` per config, in order.
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

        def task_runs(task: list[int]) -> tuple[list[Run], Dataset]:
            return [runs[i] for i in task], datasets[runs[task[0]][0].data.source]

        # with workers, every task goes to the threads, the costliest first (they balance better)
        outcomes: dict[int, Outcome] = {}
        if workers > 1:
            threaded = sorted(range(len(tasks)), key=lambda k: -task_cost([runs[i][0] for i in tasks[k]],
                                                                          task_runs(tasks[k])[1].image_shape))
        else:
            threaded = []
            for k, task in enumerate(tasks):
                outcomes[k] = run_task(*task_runs(task), runs[task[0]][0].train.threads, progress)
        if threaded:
            threads = max(1, (runs[tasks[threaded[0]][0]][0].train.threads or os.cpu_count() or 1) // workers)
            kind = worker_kind or DEFAULT_WORKER_KIND
            done_in_workers = run_in_workers(kind, run_task, [task_runs(tasks[k]) for k in threaded], workers, threads)
            outcomes.update(zip(threaded, done_in_workers))
        for k, task in enumerate(tasks):
            done, failed = outcomes[k]
            failures += failed
            for j, result in done.items():
                results[task[j]] = result
    if failures:
        more = f"; and {len(failures) - 1} more run(s) stopped the same way" if len(failures) > 1 else ""
        raise Diverged(failures[0] + more)
    return [r for r in results if r is not None]


Run = tuple[Config, Path, bool]  # a claimed run: its config, its directory, whether its final files are intact
Outcome = tuple[dict[int, TrainResult], list[str]]  # a task's results by position, its diverged runs' errors


def default_workers(configs: Sequence[Config]) -> int:
    """``train_many``'s choice: on the CPU, one thread per core (within ``train.threads``, at most
    one per model); 1 for an accelerator (one process drives it, stacked models make its work
    large). Measured on an idle 2-core machine: six dense16 models in two threads of three stacked
    models each train ~1.1x faster than six stacked models on two intra-op threads; two conv16
    models in two threads train about as fast as one after the other on two intra-op threads (in
    channels-last; 1.2x faster before); on a busy machine the threads gain far more (intra-op
    threads wait on each other; see the performance page of the documentation)."""
    if not configs or select_device(configs[0].train.device).type != "cpu":
        return 1
    cores = configs[0].train.threads or os.cpu_count() or 1
    return max(1, min(cores, len(configs)))


def task_cost(configs: Sequence[Config], image_shape: tuple[int, ...]) -> float:
    """A task's work, for ordering: epochs times the FLOPs of one example's training step, summed
    over its models (:func:`vaescope.training.cost.training_flops_per_example` on the model its config builds)."""

    with global_rng_kept():  # leaves the global generator as it was
        model = build_model(configs[0].model, image_shape)
    return float(training_flops_per_example(model, image_shape)) * sum(c.train.epochs for c in configs)


def plan_tasks(configs: Sequence[Config], max_models: int = 16, workers: int = 1) -> list[list[int]]:
    """The indices of ``configs`` that train together, task by task: each group (:func:`group_key`)
    of batchable configs split into ``workers`` parts (one per worker thread) of at most
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


def run_task(runs: Sequence[Run], data: Dataset, threads: int | None, progress: bool = True,
             stop: threading.Event | None = None) -> Outcome:
    """Train one task of :func:`plan_tasks` (locks held by the caller) with ``threads`` intra-op
    threads (None: as they are): the results by position, and the one-line errors of the runs that
    diverged. A batchable task stops at the next step once ``stop`` is set."""
    failures: list[str] = []
    with cpu_settings(threads) if threads is not None else contextlib.nullcontext():
        if batchable(runs[0][0]) and (len(runs) > 1 or stop is not None):
            return train_group(runs, data, progress, failures, stop), failures
        config, out, intact = runs[0]
        try:
            return {0: train_claimed(config, out, True, data, progress, None, intact, stop)}, failures
        except Diverged as err:
            return {}, [f"{out}: {err}"]


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
                failures: list[str] | None = None, stop: threading.Event | None = None) -> dict[int, TrainResult]:
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
        setup = prepare_training(config, data.image_shape, device)
        state = start_run(out, config, setup, own.subset, resume=True)
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
                if stop is not None and stop.is_set():
                    raise Stopped
                traced = [cohort[i] for i in alive if step % cohort[i].every == 0]
                if traced:
                    sync()  # the stacked weights into the models the trace measures
                    for member in traced:
                        subset = subsets[member.index].subset
                        member.state.trace.add(latent_statistics(member.state.setup.model, subset, batch_size=len(subset)), step,
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

