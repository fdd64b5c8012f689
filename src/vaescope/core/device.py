"""The machine: the torch device and the CPU threads a command uses."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from vaescope.core.errors import VaescopeError


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VaescopeError(f"train.device is {name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def configure_cpu(threads: int = 0) -> None:
    """Use every core (or ``threads``), and flush denormals: tiny activations near collapse
    otherwise fall into slow subnormal arithmetic on x86. Process-wide; see :func:`cpu_settings`."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.set_flush_denormal(True)


@contextlib.contextmanager
def cpu_settings(threads: int = 0) -> Iterator[None]:
    """:func:`configure_cpu` for the duration of a block, so that a library call leaves the
    caller's process as it found it (torch cannot report the flush-to-zero flag; off is its default)."""
    previous_threads = torch.get_num_threads()
    configure_cpu(threads)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(previous_threads)

