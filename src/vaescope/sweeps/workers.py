"""Where a sweep's runs execute: a pool of local worker processes, or Ray tasks.

Both pools offer the same three calls to :func:`vaescope.sweeps.execute.train_runs`: ``submit(specs)`` returns
a handle, ``wait(handles, timeout)`` returns ``(handle, rows or exception)`` for those that ended,
and ``close()``. Each task is :func:`vaescope.sweeps.tasks.run_group`: the random seeds of one grid point trained
together, each an ordinary run directory.

Local workers are :func:`vaescope.core.processes.spawn_pool`'s: spawned, of the sweep's thread
count, dying with the sweep (so a killed sweep leaves no worker training on, holding its run's
lock); each receives the datasets once.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from vaescope.core.errors import VaescopeError
from vaescope.core.processes import end_workers, spawn_pool
from vaescope.sweeps.plan import Execution, RunSpec
from vaescope.sweeps.tasks import DataBundle, run_group

_BUNDLES: dict[str, DataBundle] = {}  # a worker's datasets, by data source


def _init_worker(bundles: Mapping[str, DataBundle]) -> None:
    _BUNDLES.update(bundles)


def _local_task(specs: list[RunSpec]) -> list[dict[str, Any] | str]:
    return run_group(specs, _BUNDLES.get(specs[0].config.data.source))


class LocalPool:
    """``execution.workers`` spawned processes; a pool broken by a dead worker is started again."""

    def __init__(self, execution: Execution, bundles: Mapping[str, DataBundle]) -> None:
        self._workers = execution.workers
        self._threads = execution.threads
        self._bundles = dict(bundles)
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    def _new_executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = spawn_pool(self._workers, self._threads, _init_worker, (self._bundles,))
        return self._executor

    def submit(self, specs: list[RunSpec]) -> concurrent.futures.Future:
        executor = self._executor or self._new_executor()
        try:
            return executor.submit(_local_task, specs)
        except BrokenProcessPool:  # a worker died (killed, out of memory): the others were lost too
            return self._new_executor().submit(_local_task, specs)

    def wait(self, handles: Sequence[concurrent.futures.Future], timeout: float) -> list[tuple[Any, Any]]:
        done, _ = concurrent.futures.wait(handles, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED)
        return [(f, f.exception() or f.result()) for f in done]

    def close(self, wait: bool = True) -> None:
        """Shut the pool down; ``wait=False`` (an interrupted sweep) also ends the workers at once: a
        run in flight resumes from its last checkpoint next time, and none starts after the sweep."""
        if self._executor is None:
            return
        if wait:
            self._executor.shutdown(wait=True, cancel_futures=True)
        else:
            end_workers(self._executor)
        self._executor = None


def import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise VaescopeError('--ray needs Ray: pip install "vaescope[ray]"') from err
    return ray


class RayPool:
    """Ray tasks of ``execution.threads`` CPUs each, on ``ray.init(address)`` or a local instance
    with every core; the datasets are put in Ray's object store once."""

    def __init__(self, execution: Execution, bundles: Mapping[str, DataBundle]) -> None:
        ray = self._ray = import_ray()
        self._started = False
        if not ray.is_initialized():
            options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False,
                                       "include_dashboard": False}
            try:
                if execution.ray == "local":
                    ray.init(num_cpus=os.cpu_count() or 1, **options)
                else:
                    ray.init(address=execution.ray, **options)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise VaescopeError(f"--ray {execution.ray}: cannot start or reach Ray ({' '.join(str(err).split())}); "
                                    "check the address, or give --ray alone for a local instance") from err
            self._started = True
        self._bundles = {source: ray.put(bundle) for source, bundle in bundles.items()}
        # retries are the sweep's own (reported, once), not Ray's silent ones
        self._task = ray.remote(num_cpus=execution.threads, max_retries=0)(run_group)

    def submit(self, specs: list[RunSpec]) -> Any:
        return self._task.remote(specs, self._bundles.get(specs[0].config.data.source))

    def wait(self, handles: Sequence[Any], timeout: float) -> list[tuple[Any, Any]]:
        ready, _ = self._ray.wait(list(handles), num_returns=len(handles), timeout=timeout)
        outcomes = []
        for ref in ready:
            try:
                outcomes.append((ref, self._ray.get(ref)))
            except self._ray.exceptions.RayError as err:  # the task's error (RayTaskError) or a lost worker
                outcomes.append((ref, err))
        return outcomes

    def close(self, wait: bool = True) -> None:
        if self._started:  # a local instance we started: its workers go with it
            self._ray.shutdown()
