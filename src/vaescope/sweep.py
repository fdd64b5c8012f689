"""``vaescope sweep``: a grid of configs x seeds, each an ordinary run directory, on local worker
processes or Ray, then the active count against latent size and the intrinsic dimension.

Layout of a sweep folder ``DIR``::

    runs/<point>-seed<S>/   one ordinary run directory per grid point and seed (vaescope train's files)
    sweep.json, sweep.csv   one row per run (see :data:`CSV_COLUMNS`); sweep.json adds the readings
    report.html, report.md  the figures and the intrinsic dimension (:mod:`vaescope.sweep_report`)

Every run is trained by :func:`vaescope.train.train` with ``resume=True``: a run whose stored config
matches is reused, an interrupted one resumes from its last checkpoint (and ends with the weights an
uninterrupted run has), so a killed sweep, run again with the same command, loses no finished run.
The sweep holds the lock of ``DIR`` (a second sweep into it is refused) and each run its own.

Execution (:func:`train_runs`, the one place that decides how a list of runs is trained): a task is
the random seeds of one grid point (:func:`point_groups`), trained together by :func:`run_group`
(:func:`vaescope.multi.train_many`: one batched computation where the model can be stacked), each
still its own run directory;

- local (default): a pool of ``workers`` spawned processes, each with ``threads`` torch threads;
- Ray: the same tasks as Ray tasks (:func:`run_group`, a plain function of picklable arguments);
  ``ray.init(address)``, or a local instance with every core.

A run that fails is reported with its error and tried once more; the others go on.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import config as config_mod
from .checkpoint import has_checkpoint, load_run
from .config import Config
from .criteria import criteria_table
from .data import Dataset, load_dataset
from .engine import as_float, cpu_settings
from .errors import VaescopeError
from .rundir import (
    METRICS_FILE,
    config_differences,
    is_finished,
    read_metrics,
    run_statistics,
    stored_config,
    training_seconds,
)
from .storage import directory_lock
from .synthetic import factor_correlations, factor_matches, factor_r2, is_synthetic, load_factors

log = logging.getLogger(__name__)

RUNS_DIR = "runs"
SWEEP_JSON, SWEEP_CSV = "sweep.json", "sweep.csv"
CRITERIA = {"mu_variance": "Var(mu) < threshold", "sigma2": "mean sigma^2 > threshold",
            "kl": "mean KL < threshold"}
CSV_COLUMNS = ["run", "seed", "latent_dim",
               *[f"{state}_{c}" for c in CRITERIA for state in ("inactive", "active")], "in_between",
               "test_loss", "test_reconstruction", "test_kl", "variance_law_max_abs_dev", "seconds",
               "status", "attempts", "error", "run_dir"]
ATTEMPTS = 2  # a failed run is tried once more


# ---------------------------------------------------------------------------- the grid

def parse_grid(texts: Sequence[str]) -> dict[str, list[Any]]:
    """``["model.latent_dim=2,4,8", "loss.beta=0.5,1"]`` -> ``{key: [values]}``; each value is read
    as TOML (``4``, ``0.5``, ``true``, a bare string). Keys are checked by :func:`expand`."""
    grid: dict[str, list[Any]] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise VaescopeError(f"--grid {text!r} is not of the form section.key=v1,v2,..., e.g. model.latent_dim=2,4,8")
        parts = [p.strip() for p in raw.split(",")]
        if not raw.strip() or any(not p for p in parts):
            raise VaescopeError(f"--grid {key} has an empty value list or an empty value ({raw!r}); "
                                "give values separated by commas, e.g. --grid model.latent_dim=2,4,8")
        if key in grid:
            raise VaescopeError(f"--grid {key} is given twice; list all its values in one --grid")
        if key == "train.seed":
            raise VaescopeError("--grid train.seed: seeds are set with --seeds N (0 .. N-1)")
        values = [config_mod.parse_override(f"{key}={p}")[1] for p in parts]
        if len({json.dumps(v) for v in values}) != len(values):
            raise VaescopeError(f"--grid {key} lists a value twice ({raw}); give each value once")
        grid[key] = values
    return grid


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep; plain data, picklable (it travels to worker processes and Ray tasks)."""

    name: str                 # "<point>-seed<S>", the run directory's name
    point: dict[str, Any]     # grid key -> value
    seed: int
    config: Config
    run_dir: str              # absolute: a Ray worker may run in another directory


def _value_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(_value_text(v) for v in value)
    return re.sub(r"[^A-Za-z0-9.+-]", "_", str(value).lower() if isinstance(value, bool) else str(value))


def point_name(point: Mapping[str, Any], base_name: str) -> str:
    """A run-directory-safe name for a grid point: ``latent_dim8-beta0.5`` (the last part of each
    key, or the whole key when two keys end alike); the config's name for an empty grid."""
    if not point:
        return base_name
    shorts = [k.rsplit(".", 1)[-1] for k in point]
    labels = [k.replace(".", "_") if shorts.count(s) > 1 else s for k, s in zip(point, shorts)]
    return "-".join(f"{label}{_value_text(v)}" for label, v in zip(labels, point.values()))


def expand(base: Config, grid: Mapping[str, Sequence[Any]], seeds: Sequence[int], out: Path,
           threads: int) -> list[RunSpec]:
    """Every grid point x seed as a :class:`RunSpec`, each config validated; ``train.threads`` is
    ``threads``. A bad key or value is one line naming it, before anything trains."""
    for key, values in grid.items():
        if not values:
            raise VaescopeError(f"--grid {key} has no values; give at least one")
        for value in values:
            try:
                config_mod.replace(base, **{key: value})
            except VaescopeError as err:
                raise VaescopeError(f"--grid {key}={value!r}: {err}") from None
    specs: list[RunSpec] = []
    for combination in itertools.product(*grid.values()):
        point = dict(zip(grid, combination))
        try:
            cfg = config_mod.replace(base, **point)
        except VaescopeError as err:
            raise VaescopeError(f"--grid point {point}: {err}") from None
        name = point_name(point, base.name)
        for seed in seeds:
            run_cfg = config_mod.replace(cfg, **{"train.seed": seed, "train.threads": threads})
            run_dir = out.resolve() / RUNS_DIR / f"{name}-seed{seed}"
            specs.append(RunSpec(f"{name}-seed{seed}", point, seed, run_cfg, str(run_dir)))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise VaescopeError(f"two grid points share the run name {duplicate!r}; give values that differ in writing")
    return specs


def _adopt_stored(spec: RunSpec) -> RunSpec:
    """A run already in the folder: keep its stored config when it differs only in ``train.threads``
    (how many threads ran it, not what it is); refuse a run of another config."""
    stored = stored_config(Path(spec.run_dir))
    if stored is None or stored == spec.config:
        return spec
    changed = [k for k in config_differences(stored, spec.config) if k != "train.threads"]
    if changed:
        raise VaescopeError(f"{spec.run_dir} holds a run of another config ({', '.join(changed[:4])} differ); "
                            "use another --out, or remove that run")
    return replace(spec, config=stored)


# ---------------------------------------------------------------------------- one run

@dataclass(frozen=True)
class DataBundle:
    """A dataset and, for synthetic data, the factors of its test images ``(N, K)`` and their names."""

    dataset: Dataset
    factor_names: tuple[str, ...] = ()
    test_factors: np.ndarray | None = None


def load_bundle(source: str, dataset: Dataset | None = None) -> DataBundle:
    data = dataset if dataset is not None else load_dataset(source)
    if is_synthetic(source):
        factors = load_factors(source)
        if len(factors.test) == len(data.x_test):
            return DataBundle(data, factors.names, factors.test)
    return DataBundle(data)


@torch.no_grad()
def _test_means(model: torch.nn.Module, x: np.ndarray, batch_size: int = 2000) -> np.ndarray:
    model.eval()
    parts = [model.encode(as_float(torch.as_tensor(np.ascontiguousarray(x[s : s + batch_size]))))[0]
             for s in range(0, len(x), batch_size)]
    return torch.cat(parts).double().numpy()  # (N, D)


def _status(spec: RunSpec) -> str:
    run_dir = Path(spec.run_dir)
    return "reused" if is_finished(run_dir, spec.config) else "resumed" if has_checkpoint(run_dir) else "trained"


def run_group(specs: Sequence[RunSpec], bundle: DataBundle | None = None) -> list[dict[str, Any] | str]:
    """Train the runs of one grid point (its seeds: one architecture) together with
    :func:`vaescope.multi.train_many` in this process (stacked where the model allows), then
    measure each (:func:`run_one`); returns each run's row, or its one-line error where it failed.

    A plain function of picklable arguments, what a worker process and a Ray task call.
    """
    if bundle is None:
        bundle = load_bundle(specs[0].config.data.source)
    statuses = [_status(spec) for spec in specs]
    if len(specs) > 1 and any(status != "reused" for status in statuses):
        from .multi import train_many

        try:
            train_many([spec.config for spec in specs], [spec.run_dir for spec in specs], dataset=bundle.dataset,
                       progress=False, workers=1)
        except VaescopeError:
            pass  # a run that failed fails again below, alone, with its own error
    outcomes: list[dict[str, Any] | str] = []
    for spec, status in zip(specs, statuses):
        try:
            outcomes.append(run_one(spec, bundle, status))
        except Exception as err:  # noqa: BLE001  (reported per run; the sweep goes on)
            outcomes.append(_error_line(err))
    return outcomes


def run_one(spec: RunSpec, bundle: DataBundle | None = None, status: str | None = None) -> dict[str, Any]:
    """Train (or reuse, or resume) one run and measure it on the test split; returns its row.

    A plain function of picklable arguments that writes an ordinary run directory. ``bundle`` None
    loads ``config.data.source`` here; ``status``: what was found before the run's group trained it.
    """
    run_dir = Path(spec.run_dir)
    if bundle is None:
        bundle = load_bundle(spec.config.data.source)
    found = _status(spec)
    status = status or found
    if found != "reused":
        from .train import train

        train(spec.config, run_dir, resume=True, dataset=bundle.dataset, progress=False)
    run = load_run(run_dir)
    stats = run_statistics(run, "test", dataset=bundle.dataset)  # also writes stats-test.json
    last = read_metrics(run_dir)[-1]
    inactive = {"mu_variance": ~stats.active, "sigma2": stats.inactive_by_sigma2, "kl": stats.inactive_by_kl}
    row: dict[str, Any] = {"run": spec.name, **spec.point, "seed": spec.seed, "latent_dim": stats.latent_dim}
    for criterion, mask in inactive.items():
        row[f"inactive_{criterion}"] = int(mask.sum())
        row[f"active_{criterion}"] = int((~mask).sum())
    # neither clearly on nor clearly off by every rule, half a decade from its threshold (vaescope.criteria)
    between = np.flatnonzero(criteria_table(stats).polarisation == "between").tolist()
    row.update({"in_between": len(between), "in_between_variables": between})
    row.update({"test_loss": last["test_loss"], "test_reconstruction": last["test_reconstruction"],
                "test_kl": last["test_kl"], "variance_law_max_abs_dev": stats.variance_law_max_abs_dev,
                "seconds": round(training_seconds(run_dir), 3), "status": status, "attempts": 1, "error": "",
                "run_dir": f"{RUNS_DIR}/{spec.name}", "active_variables": np.flatnonzero(stats.active).tolist()})
    if bundle.test_factors is not None:
        with cpu_settings(spec.config.train.threads):
            mu = _test_means(run.model, bundle.dataset.x_test)
        corr = factor_correlations(mu, bundle.test_factors)
        matches = factor_matches(corr, stats.active)
        r2 = factor_r2(mu[:, stats.active], bundle.test_factors)
        row["factors"] = {"names": list(bundle.factor_names), "correlation": corr.round(4).tolist(),
                          "matches": [{"factor": n, **m, "r2_active": round(float(r), 4)}
                                      for n, m, r in zip(bundle.factor_names, matches, r2)]}
    return row


# ---------------------------------------------------------------------------- execution

@dataclass(frozen=True)
class Execution:
    """How runs are trained: ``workers`` local processes of ``threads`` torch threads each, or Ray
    tasks of ``threads`` CPUs each when ``ray`` is set (``"local"``: a local instance; else an address)."""

    workers: int
    threads: int
    ray: str | None = None


def default_execution(runs: int, workers: int = 0, threads: int = 0, ray: str | None = None) -> Execution:
    """0 means automatic: one worker per core (at most one per run), and the cores shared out."""
    cores = os.cpu_count() or 1
    workers = workers or max(1, min(cores, runs))
    threads = threads or max(1, cores // workers)
    return Execution(workers, threads, ray)


def _error_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err  # a Ray task's error wraps the task's own
    text = " ".join(str(cause).split()) or type(cause).__name__
    return text if isinstance(cause, VaescopeError) else f"{type(cause).__name__}: {text}"


def train_runs(specs: Sequence[RunSpec], execution: Execution, bundles: Mapping[str, DataBundle],
               on_done: Callable[[RunSpec, dict[str, Any]], None],
               on_wait: Callable[[], None] = lambda: None) -> None:
    """Train every run of ``specs`` as ``execution`` says, calling ``on_done(spec, row)`` as each
    ends (a failed run's row has ``status`` "failed" and its ``error``) and ``on_wait()`` about
    twice a second. The one place to change how a list of runs is trained."""
    if not specs:
        return
    from .sweep_workers import LocalPool, RayPool

    pool: LocalPool | RayPool = RayPool(execution, bundles) if execution.ray is not None else LocalPool(execution, bundles)
    attempts = {spec.name: 0 for spec in specs}
    try:
        pending = {pool.submit(group): group for group in point_groups(specs, execution.workers)}
        while pending:
            for handle, outcome in pool.wait(list(pending), timeout=0.5):
                group = pending.pop(handle)
                # a task's own failure (a dead worker, a bug) is every run's of its group
                results = ([_error_line(outcome)] * len(group) if isinstance(outcome, BaseException) else outcome)
                for spec, result in zip(group, results):
                    attempts[spec.name] += 1
                    if not isinstance(result, str):
                        on_done(spec, {**result, "attempts": attempts[spec.name]})
                    elif attempts[spec.name] < ATTEMPTS:
                        log.warning("run %s failed (%s); trying it once more", spec.name, result)
                        pending[pool.submit([spec])] = [spec]
                    else:
                        log.warning("run %s failed again (%s); the others go on", spec.name, result)
                        on_done(spec, failed_row(spec, result, attempts[spec.name]))
            on_wait()
    except BaseException:  # Ctrl-C or a bug: do not wait for runs in flight (workers die with us)
        pool.close(wait=False)
        raise
    pool.close()


def point_groups(specs: Sequence[RunSpec], workers: int) -> list[list[RunSpec]]:
    """The tasks: the random seeds of each grid point together (they train as one batched computation),
    each point's seeds split in two where there are fewer points than ``workers``, so that no
    worker idles."""
    points: dict[str, list[RunSpec]] = {}
    for spec in specs:
        points.setdefault(repr(sorted(spec.point.items())), []).append(spec)
    parts = 1 if len(points) >= workers else -(-workers // max(1, len(points)))
    return [seeds[k::parts] for seeds in points.values() for k in range(min(parts, len(seeds)))]


def failed_row(spec: RunSpec, error: str, attempts: int) -> dict[str, Any]:
    return {"run": spec.name, **spec.point, "seed": spec.seed, "latent_dim": spec.config.model.latent_dim,
            "status": "failed", "attempts": attempts, "error": error, "run_dir": f"{RUNS_DIR}/{spec.name}"}


# ---------------------------------------------------------------------------- the sweep

def _epochs_done(run_dir: str) -> int:
    try:
        with open(Path(run_dir) / METRICS_FILE, "rb") as handle:
            return max(0, sum(1 for _ in handle) - 1)
    except OSError:
        return 0


def sweep(config: Config, out: str | Path, grid: Mapping[str, Sequence[Any]] | None = None,
          seeds: int | Sequence[int] = 1, workers: int = 0, threads: int = 0, ray: str | None = None,
          dataset: Dataset | None = None, progress: bool = True, report: bool = True,
          wait: bool = False) -> list[dict[str, Any]]:
    """Train every point of ``grid`` (dotted key -> values) x ``seeds`` (a count: 0 .. N-1, or a
    list) from ``config`` into ``out/runs/``, write ``sweep.json``, ``sweep.csv`` and (``report``)
    ``report.html``; returns the rows, one per run, in grid order.

    ``workers`` / ``threads``: local processes and torch threads each (0: automatic; ``threads``
    falls back on ``config.train.threads``); ``ray``:
    ``"local"`` for a local Ray instance or a cluster address. ``dataset`` replaces
    ``config.data.source`` for every run (it then cannot vary in the grid). ``out`` is locked for
    the whole sweep: another sweep into it is refused with this process's PID, or with ``wait``
    waits for it to finish.
    """
    out = Path(out)
    grid = {k: list(v) for k, v in (grid or {}).items()}
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list or min(seed_list) < 0 or len(set(seed_list)) != len(seed_list):
        raise VaescopeError(f"seeds {seeds!r}: give a count >= 1 or distinct seeds >= 0")
    if dataset is not None and "data.source" in grid:
        raise VaescopeError("--grid data.source cannot vary when a dataset object is given; drop one of them")
    probe = expand(config, grid, seed_list, out, threads=1)  # validates before anything else
    execution = default_execution(len(probe), workers, threads or config.train.threads, ray)
    specs = [replace(s, config=config_mod.replace(s.config, **{"train.threads": execution.threads})) for s in probe]
    from .sweep_report import write_results, write_sweep_report

    started = time.perf_counter()
    with directory_lock(out, what="sweep folder", wait=wait,
                        hint="wait for it to finish (--wait queues behind it) or choose another --out"):
        specs = [_adopt_stored(s) for s in specs]
        sources = sorted({s.config.data.source for s in specs})
        bundles = {src: load_bundle(src, dataset) for src in sources}
        rows: dict[str, dict[str, Any]] = {}
        done_first = [s for s in specs if is_finished(Path(s.run_dir), s.config)]
        to_train = [s for s in specs if s not in done_first]
        where = (f"Ray ({execution.ray}), {execution.threads} CPU(s) per task" if execution.ray else
                 f"{execution.workers} worker process(es) x {execution.threads} thread(s)")
        log.info("sweep: %d runs (%d reused, %d to train) on %s -> %s", len(specs), len(done_first),
                 len(to_train), where, out)
        total_epochs = sum(s.config.train.epochs for s in specs)
        bar = tqdm(total=len(specs), unit="run", desc="sweep", disable=not progress or None, dynamic_ncols=True)

        def finished(spec: RunSpec, row: dict[str, Any]) -> None:
            rows[spec.name] = row
            bar.update(1)
            if row["status"] != "failed":
                log.info("%s: %d/%d active (Var(mu)), test loss %.2f, max |law - 1| %.3f, %s",
                         spec.name, row["active_mu_variance"], row["latent_dim"], row["test_loss"],
                         row["variance_law_max_abs_dev"], row["status"])
            write_results(out, config, grid, seed_list, execution, [rows[s.name] for s in specs if s.name in rows])

        def show_epochs() -> None:
            if not bar.disable:
                done = sum(s.config.train.epochs if s.name in rows else _epochs_done(s.run_dir) for s in specs)
                bar.set_postfix_str(f"epochs {done}/{total_epochs}")

        try:
            for spec in done_first:  # measured here: no worker needs to start for them
                with cpu_settings(spec.config.train.threads):
                    finished(spec, run_one(spec, bundles[spec.config.data.source]))
            train_runs(to_train, execution, bundles, finished, show_epochs)
        finally:
            bar.close()
        ordered = [rows[s.name] for s in specs]
        results = write_results(out, config, grid, seed_list, execution, ordered, time.perf_counter() - started)
        if report:
            html_path = write_sweep_report(out, results)
            log.info("wrote %s, %s and %s", html_path, out / SWEEP_JSON, out / SWEEP_CSV)
    return ordered
