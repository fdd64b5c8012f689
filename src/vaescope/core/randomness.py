"""One lock for torch's, NumPy's and Python's global random generators, shared by every thread.

A global generator is one object for the whole process. Two kinds of code touch it: a seeded
initialisation (``torch.manual_seed(seed)`` then building a model draws its weights from it) and a
block that saves the states and puts them back (:func:`vaescope.models.isolation.untouched`,
:func:`global_rng_kept`). Run in two threads at once, the second undoes the first: a block that ends
while another thread is half way through its initialisation writes back an older state, and that
run gets other weights. Worker threads (:mod:`vaescope.training.multi`) each set up runs and measure
them, so each of these sections holds :data:`GLOBAL_RNG_LOCK` from start to end. It is re-entrant:
the blocks nest.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

GLOBAL_RNG_LOCK = threading.RLock()


@contextlib.contextmanager
def global_rng_kept() -> Iterator[None]:
    """A block whose draws from torch's global CPU generator are undone on exit, one thread at a time
    (``torch.random.fork_rng`` under :data:`GLOBAL_RNG_LOCK`)."""
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        yield


@contextlib.contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """A block that draws from torch's global generator seeded ``seed`` (a model's initialisation), one
    thread at a time; the generator is left where the block's draws leave it, as ``torch.manual_seed`` does."""
    with GLOBAL_RNG_LOCK:
        torch.manual_seed(seed)
        yield
