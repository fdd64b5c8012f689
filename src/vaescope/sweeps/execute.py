"""Running a sweep: the one place that decides how its runs are trained (local workers or Ray), retries, and the results files."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vaescope.core import config as config_mod
from vaescope.core.config import Config
from vaescope.core.device import cpu_settings
from vaescope.core.errors import VaescopeError
from vaescope.core.storage import directory_lock
from vaescope.data.dataset import Dataset
from vaescope.runs.files import (
    METRICS_FILE,
    is_finished,
)
from vaescope.sweeps.plan import (
    ATTEMPTS,
    SWEEP_CSV,
    SWEEP_JSON,
    Execution,
    RunSpec,
    _adopt_stored,
    _error_line,
    default_execution,
    expand,
    failed_row,
    point_groups,
)
from vaescope.sweeps.report import write_results, write_sweep_report
from vaescope.sweeps.tasks import DataBundle, load_bundle, run_one
from vaescope.sweeps.workers import LocalPool, RayPool

log = logging.getLogger(__name__)


def train_runs(specs: Sequence[RunSpec], execution: Execution, bundles: Mapping[str, DataBundle],
               on_done: Callable[[RunSpec, dict[str, Any]], None],
               on_wait: Callable[[], None] = lambda: None) -> None:
    """Train every run of ``specs`` as ``execution`` says, calling ``on_done(spec, row)`` as each
    ends (a failed run's row has ``status`` "failed" and its ``error``) and ``on_wait()`` about
    twice a second. The one place to change how a list of runs is trained."""
    if not specs:
        return

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

