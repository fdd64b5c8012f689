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

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import Config
from .data import Dataset, check_dataset, load_dataset
from .engine import (
    NonFiniteLoss,
    _flag_non_finite,
    as_float,
    cpu_settings,
    make_optimizer,
    prepare_training,
    select_device,
)
from .errors import VaescopeError
from .models import MODEL_KINDS
from .stacked import (
    StackedDenseVAE,
    flat_images,
    non_finite_models,
    stack_optimizer_state,
    stacked_loss_terms,
    unstack_optimizer_state,
)
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
               progress: bool = True, max_models: int = 16) -> list[TrainResult]:
    """Train every ``configs[i]`` into ``outs[i]``; compatible configs together (:func:`group_key`),
    at most ``max_models`` per batched computation; the others one by one as ``train`` does.

    Each directory follows the run-directory policy with ``resume=True``: a finished run of the
    same config is reused, an unfinished one resumed, a run of another config refused (before
    anything trains). The directories stay locked for the whole call. Returns one
    :class:`~vaescope.train.TrainResult` per config, in order.
    """
    if len(configs) != len(outs):
        raise VaescopeError(f"train_many: {len(configs)} configs but {len(outs)} run directories; give one each")
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
        claimed = []
        for config, path in zip(configs, paths):
            locks.enter_context(directory_lock(path))
            claimed.append(claim_run(path, config, resume=True))
        groups: dict[str, list[int]] = {}
        for i, (config, _) in enumerate(claimed):
            groups.setdefault(group_key(config), []).append(i)
        datasets: dict[str, Dataset] = {}
        for indices in groups.values():
            config = claimed[indices[0]][0]
            if dataset is None and config.data.source not in datasets:
                datasets[config.data.source] = load_dataset(config.data.source, config.data.max_bytes)
            data = dataset if dataset is not None else datasets[config.data.source]
            chunks = ([indices[s : s + max_models] for s in range(0, len(indices), max_models)]
                      if batchable(config) and len(indices) > 1 else [[i] for i in indices])
            for chunk in chunks:
                runs = [(claimed[i][0], paths[i], claimed[i][1]) for i in chunk]
                with cpu_settings(config.train.threads):
                    if len(chunk) == 1:
                        done = {0: _train_one(*runs[0], data, progress, failures)}
                    else:
                        done = train_group(runs, data, progress, failures)
                for j, result in done.items():
                    results[chunk[j]] = result
    if failures:
        more = f"; and {len(failures) - 1} more run(s) stopped the same way" if len(failures) > 1 else ""
        raise VaescopeError(failures[0] + more)
    return [r for r in results if r is not None]


def _train_one(config: Config, out: Path, intact: bool, data: Dataset, progress: bool,
               failures: list[str]) -> TrainResult | None:
    try:
        return train_claimed(config, out, True, data, progress, None, intact)
    except Diverged as err:
        failures.append(f"{out}: {err}")
        return None


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
            started = time.perf_counter()
            means, diverged = cohort_epoch(cohort, tensors, subsets, first.data.binarize == "dynamic",
                                           steps_per_epoch, bar)
            share = (time.perf_counter() - started) / len(cohort)  # each model's share of the epoch
            for member, fault in diverged:
                failures.append(f"{member.state.out}: {divergence(member.state.out, epoch + 1, fault)}")
                if at_once:
                    raise Diverged(failures[-1])
                members.remove(member)
            for member in cohort:
                if member in members:
                    end_epoch(member.state, subsets[member.index], means[member.index], share, member.name)
                    if member.state.finished:
                        results[member.index] = finish_run(member.state, data.image_shape, False)
                        members.remove(member)
    finally:
        bar.close()
    return results


def cohort_epoch(cohort: list[Member], tensors: RunTensors, subsets: dict[int, RunTensors], binarize: bool,
                 steps_per_epoch: int, bar: Any) -> tuple[dict[int, dict[str, float]], list[tuple[Member, NonFiniteLoss]]]:
    """One epoch of every model of ``cohort`` (all at the same step), batched. Returns each
    model's mean loss, reconstruction and KL by member index, and the members that diverged."""
    x = flat_images(tensors.x_train)  # (N, P): one gather serves every model
    n, device = len(x), x.device
    batch_size = cohort[0].state.config.train.batch_size
    image_shape = tensors.x_train.shape[1:]
    alive = list(cohort)
    models = [m.state.setup.model for m in alive]
    stack = StackedDenseVAE(models)
    optimizer = make_optimizer(stack, cohort[0].state.config.train.lr)
    stack_optimizer_state([m.state.setup.optimizer for m in alive], models, optimizer, stack)
    orders = torch.stack([torch.randperm(n, generator=m.state.setup.shuffle) for m in alive]).to(device)  # (M, N)
    totals = torch.zeros(len(alive), 3, dtype=torch.float64, device=device)
    diverged: list[tuple[Member, NonFiniteLoss]] = []
    flag, one = torch.zeros((), device=device), torch.ones((), device=device)
    step = alive[0].state.step
    for start in range(0, n, batch_size):
        rows = orders[:, start : start + batch_size]
        m, b = rows.shape
        batch = as_float(torch.index_select(x, 0, rows.reshape(-1))).view(m, b, *image_shape)
        noises = [member.state.setup.noise for member in alive]
        if binarize:  # engine.train_epoch's draw, model by model
            batch = torch.stack([torch.bernoulli(batch[i], generator=noises[i]) for i in range(m)])
        terms = stacked_loss_terms(stack, batch, [member.state.config.loss for member in alive], noises)
        optimizer.zero_grad(set_to_none=True)
        total = terms.totals.sum()  # disjoint parameters: each model gets its own loss's gradient
        total.backward()
        _flag_non_finite(list(stack.parameters()), total, flag, one)
        if flag.item():  # rare: find the models, keep the others (and this step of theirs)
            bad = dict(non_finite_models(stack, terms.totals))
            keep = [i for i in range(m) if i not in bad]
            for i, loss_finite in bad.items():
                diverged.append((alive[i], NonFiniteLoss(step + 1, gradient=loss_finite)))
            _store(stack, optimizer, alive)
            alive = [alive[i] for i in keep]
            if not alive:
                return {}, diverged
            kept = torch.tensor(keep, device=device)
            orders, totals = orders.index_select(0, kept), totals.index_select(0, kept)
            stack = stack.select(keep)
            optimizer = make_optimizer(stack, cohort[0].state.config.train.lr)
            stack_optimizer_state([a.state.setup.optimizer for a in alive], [a.state.setup.model for a in alive],
                                  optimizer, stack)
            terms = dataclasses.replace(terms, totals=terms.totals[keep], reconstruction=terms.reconstruction[keep],
                                        regularizer=terms.regularizer[keep])
            flag.zero_()
            m = len(alive)
        optimizer.step()
        step += 1
        with torch.no_grad():
            part = torch.stack([terms.totals, terms.reconstruction.mean(1), terms.regularizer.sum(2).mean(1)], 1)
            totals.add_(part, alpha=b)
        traced = [a for a in alive if step % a.every == 0]
        if traced:
            stack.copy_into([a.state.setup.model for a in alive])
            for a in traced:
                a.state.trace.record(a.state.setup.model, subsets[a.index].subset, step, step / steps_per_epoch)
        bar.update(m)
    _store(stack, optimizer, alive)
    for a in alive:
        a.state.step = step
    means = (totals / n).tolist()
    return ({a.index: dict(zip(("loss", "reconstruction", "kl"), row)) for a, row in zip(alive, means)},
            diverged)


def _store(stack: StackedDenseVAE, optimizer: torch.optim.Optimizer, members: list[Member]) -> None:
    """The stack's weights and Adam state back into each member's model and optimizer."""
    models = [m.state.setup.model for m in members]
    stack.copy_into(models)
    unstack_optimizer_state(optimizer, stack, [m.state.setup.optimizer for m in members], models)


# ---------------------------------------------------------------------------- benchmark

def _train_apart(configs: Sequence[Config], outs: Sequence[Path], dataset: Dataset) -> None:
    from .train import train
    for config, out in zip(configs, outs):
        train(config, out, dataset=dataset, progress=False)


def _train_together(configs: Sequence[Config], outs: Sequence[Path], dataset: Dataset) -> None:
    train_many(configs, outs, dataset=dataset, progress=False)


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    logging.getLogger("vaescope").setLevel(logging.WARNING)


def multi_model_benchmark(config: Config | None = None, models: int = 6, rounds: int = 3,
                          dataset: Dataset | None = None, workers: int = 2) -> dict[str, Any]:
    """Seconds per model-epoch of ``models`` seeds of ``config`` (default: the dense16 preset for
    1 epoch) trained by :func:`train_many` ("together") and by ``train`` one after the other
    ("apart"): whole runs (test metrics, trace, checkpoints, final files) into fresh directories,
    ``rounds`` interleaved rounds, medians. With ``workers`` > 1, both also in that many worker
    processes of one thread each, the models split between them (the pool is started, and its
    imports paid, before the rounds). ``speedup`` is apart / together."""
    import concurrent.futures
    import multiprocessing
    import statistics
    import tempfile

    from . import config as config_mod
    if config is None:
        config = config_mod.resolve("dense16", overrides=["train.epochs=1"])
    data = check_dataset(dataset) if dataset is not None else load_dataset(config.data.source, config.data.max_bytes)
    seeds = [config_mod.replace(config, **{"train.seed": config.train.seed + i}) for i in range(models)]
    contenders = {"together": _train_together, "apart": _train_apart}
    pool = None
    if workers > 1:
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                      initializer=_worker_init, initargs=(1,))
        one_thread = [config_mod.replace(c, **{"train.threads": 1}) for c in seeds]
        parts = [list(range(models))[w::workers] for w in range(workers)]

        def in_workers(work: Any) -> Any:
            def run(_: Any, outs: Sequence[Path], data: Dataset) -> None:
                futures = [pool.submit(work, [one_thread[i] for i in part], [outs[i] for i in part], data)
                           for part in parts if part]
                for future in futures:
                    future.result()
            return run

        contenders.update({"together_workers": in_workers(_train_together), "apart_workers": in_workers(_train_apart)})
        list(pool.map(_worker_init, [1] * workers))  # start the workers: spawn and imports before the clock
    times: dict[str, list[float]] = {name: [] for name in contenders}
    try:
        with tempfile.TemporaryDirectory(prefix="vaescope-multi-bench-") as root:
            names = list(contenders)
            for r in range(rounds):
                for name in names[r % len(names):] + names[: r % len(names)]:
                    outs = [Path(root) / f"{name}-{r}-{i}" for i in range(models)]
                    started = time.perf_counter()
                    contenders[name](seeds, outs, data)
                    times[name].append((time.perf_counter() - started) / (models * config.train.epochs))
                log.info("round %d/%d: %s", r + 1, rounds, ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    finally:
        if pool is not None:
            pool.shutdown()
    result: dict[str, Any] = {"models": models, "epochs": config.train.epochs, "rounds": rounds,
                              "threads": config.train.threads or torch.get_num_threads()}
    for name, values in times.items():
        result[f"{name}_seconds_per_model_epoch"] = statistics.median(values)
    result["speedup"] = result["apart_seconds_per_model_epoch"] / result["together_seconds_per_model_epoch"]
    if pool is not None:
        result["workers"] = workers
    return result
