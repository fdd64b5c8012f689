"""Where :func:`vaescope.training.multi.train_many`'s tasks run on the CPU: worker threads or processes.

Both take the same list of tasks and a task function (``fn(runs, data, threads, progress=False,
stop=event) -> outcome``, a module-level function) and return the outcomes in order. The first
exception (or Ctrl-C) sets ``stop``, so that the other tasks end at their next step, then is raised.

- :func:`in_threads`: ``workers`` threads of this process with ``threads`` intra-op threads each
  for the while. Torch's kernels release the GIL, but the Python of every step does not.
- :func:`in_processes`: ``workers`` spawned processes (:func:`vaescope.core.processes.spawn_pool`)
  of ``threads`` intra-op threads each, with no GIL in common. The pool is started once per
  command and kept for the next call with the same shape (a spawned interpreter takes seconds to
  import torch); each task's runs and data are sent to it, its results come back.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import multiprocessing
import threading
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from vaescope.core.device import cpu_settings
from vaescope.core.errors import VaescopeError
from vaescope.core.processes import end_workers, spawn_pool

log = logging.getLogger(__name__)

Task = tuple[Any, Any]  # (runs, data): the arguments of one call of the task function
WORKER_KINDS = ("threads", "processes")


def _first_failure(futures: list[concurrent.futures.Future], stop: Any) -> list[Any]:
    try:
        done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        for future in done:
            future.result()  # a failure: raised now, not after the other tasks finish
        return [future.result() for future in futures]
    except BaseException:
        stop.set()
        for future in futures:
            future.cancel()
        concurrent.futures.wait(futures)  # the others end at their next step
        raise


def in_threads(fn: Callable[..., Any], work: Sequence[Task], workers: int, threads: int) -> list[Any]:
    """Each task in one of ``workers`` threads, torch set to ``threads`` intra-op threads for the while."""
    stop = threading.Event()

    def one(runs: Any, data: Any) -> Any:
        torch.set_flush_denormal(True)  # a per-thread CPU flag (cpu_settings set this thread's only)
        return fn(runs, data, None, progress=False, stop=stop)

    log.info("training %d tasks in %d threads", len(work), workers)
    with cpu_settings(threads), concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return _first_failure([pool.submit(one, *task) for task in work], stop)


# ---------------------------------------------------------------------------- processes

_STOP: Any = None  # in a worker process: the pool's stop event


def _init_process(stop: Any) -> None:
    global _STOP
    _STOP = stop
    torch.set_flush_denormal(True)


def _run_in_process(fn: Callable[..., Any], runs: Any, data: Any) -> Any:
    return fn(runs, data, None, progress=False, stop=_STOP)


class _Pool:
    """The command's worker processes and their stop event, kept between calls of one shape."""

    current: _Pool | None = None

    def __init__(self, workers: int, threads: int) -> None:
        self.shape = (workers, threads)
        self.stop = multiprocessing.get_context("spawn").Event()
        self.executor = spawn_pool(workers, threads, _init_process, (self.stop,))

    @classmethod
    def get(cls, workers: int, threads: int) -> _Pool:
        if cls.current is not None and cls.current.shape != (workers, threads):
            cls.close()
        if cls.current is None:
            cls.current = cls(workers, threads)
        cls.current.stop.clear()
        return cls.current

    @classmethod
    def close(cls, now: bool = False) -> None:
        if cls.current is not None:
            pool, cls.current = cls.current, None
            if now:
                end_workers(pool.executor)
            else:
                pool.executor.shutdown(wait=True, cancel_futures=True)


atexit.register(_Pool.close)


def start_processes(workers: int, threads: int) -> None:
    """Start :func:`in_processes`'s pool now (what its first call would pay: seconds to spawn)."""
    _Pool.get(workers, threads)


def in_processes(fn: Callable[..., Any], work: Sequence[Task], workers: int, threads: int) -> list[Any]:
    """Each task in one of ``workers`` spawned processes of ``threads`` intra-op threads."""
    log.info("training %d tasks in %d processes", len(work), workers)
    pool = _Pool.get(workers, threads)
    try:
        return _first_failure([pool.executor.submit(_run_in_process, fn, *task) for task in work], pool.stop)
    except BrokenProcessPool as err:
        _Pool.close(now=True)
        raise VaescopeError(
            "train_many: a worker process died or could not start (killed, out of memory, or a script that "
            "trains without `if __name__ == \"__main__\":` around its code, which spawned processes need); "
            "fix that, or give worker_kind=\"threads\"") from err
    except Exception:  # a task's error: the other tasks have ended (stopped), the workers wait idle
        raise
    except BaseException:  # Ctrl-C: end the workers now, whatever they do
        _Pool.close(now=True)
        raise


def run_in_workers(kind: str, fn: Callable[..., Any], work: Sequence[Task], workers: int, threads: int) -> list[Any]:
    """:func:`in_threads` or :func:`in_processes`, by ``kind``."""
    if kind not in WORKER_KINDS:
        raise VaescopeError(f"train_many: worker_kind {kind!r}; give one of {', '.join(WORKER_KINDS)}")
    return (in_threads if kind == "threads" else in_processes)(fn, work, workers, threads)
