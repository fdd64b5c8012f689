"""Spawned worker processes that die with the process that started them.

One definition for every pool of local workers (a sweep's, ``train_many``'s): workers are spawned
(a fresh interpreter: no copy of the parent's torch threads or locks) and, on Linux, the kernel
kills each one when its parent dies (``PR_SET_PDEATHSIG``), however the parent dies, so a killed
command leaves no worker training on.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import torch


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when ``parent`` dies; exit at once if it already has."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before we could ask
        os._exit(1)


def _init_worker(parent: int, threads: int, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    die_with_parent(parent)
    torch.set_num_threads(threads)
    logging.getLogger("vaescope").setLevel(logging.WARNING)  # the parent reports; workers stay quiet
    if initializer is not None:
        initializer(*initargs)


def spawn_pool(workers: int, threads: int, initializer: Callable[..., None] | None = None,
               initargs: tuple[Any, ...] = ()) -> concurrent.futures.ProcessPoolExecutor:
    """``workers`` spawned processes of ``threads`` torch intra-op threads each, quiet below warnings,
    that die with this process; ``initializer(*initargs)`` then runs in each (a module-level function)."""
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
        initargs=(os.getpid(), threads, initializer, initargs))


def end_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Terminate the pool's processes now, then shut it down (quick once they are gone): what a
    run in flight had written last resumes next time."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public way before 3.14
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)
