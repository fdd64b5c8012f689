"""The statistics at scale: one streaming pass over N x D data in memory set by the batch size.

``vaescope bench --scale`` measures :func:`vaescope.latent_statistics` of a dense encoder over
N = 10^6 vectors of D = 2,000 (8 GB as float32, never held at once) and reports the seconds and the
peak resident memory the pass adds. The batches are a stream: ``pool`` distinct batches generated
once from a seeded generator and handed out in turn (the statistics' cost does not depend on the values;
generating 2 x 10^9 normal numbers would time the generator instead), so what is held is the pool, one
batch's activations and the float64 sums.

Peak memory is read from the kernel: the process's high-water mark is reset (``/proc/self/clear_refs``,
Linux) right before the pass and ``VmHWM`` read after it, so the figure is the pass's own. The control,
``naive=True``, concatenates the stream into one tensor first, as code that reads all the data would:
its peak grows with N x D, which shows the probe sees a whole-data read (tests/test_scale.py).

``vaescope bench --bound`` times the importance-weighted bound at K = 1,000 over the 10,000 MNIST test
digits (:func:`bound_time`): 57.9 s on this project's 2-core CPU (the performance and measures pages of
the documentation say where the time goes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vaescope.core.errors import VaescopeError
from vaescope.data.sources import load_dataset
from vaescope.measures.bound import importance_weighted_bound
from vaescope.measures.statistics import latent_statistics
from vaescope.models.networks import DenseVAE

SCALE_N = 1_000_000
SCALE_DIM = 2_000
SCALE_BATCH = 4_000
POOL = 2
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class ScaleResult:
    """One pass: ``n`` rows of ``dim`` in batches of ``batch_size``; ``seconds``; ``peak_mib``: the peak
    resident memory during the pass above the memory held before it (MiB); ``data_mib``: what the whole
    data would take as float32; ``naive``: the control that holds it all."""

    n: int
    dim: int
    batch_size: int
    latent_dim: int
    hidden: tuple[int, ...]
    threads: int
    seconds: float
    peak_mib: float
    data_mib: float
    naive: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        what = "held whole first (the control)" if self.naive else "streamed"
        return (f"latent_statistics over {self.n:,} x {self.dim:,} float32 ({self.data_mib:,.0f} MiB of data, {what}) "
                f"in batches of {self.batch_size:,}, dense encoder {self.dim}-{'-'.join(map(str, self.hidden))}-"
                f"{2 * self.latent_dim}, {self.threads} thread(s): {self.seconds:.2f} s, peak memory "
                f"{self.peak_mib:,.1f} MiB above what was held before the pass")


def _kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise VaescopeError(f"{_STATUS} has no {field}; the scale benchmark reads peak memory from Linux's /proc")


def reset_peak() -> int:
    """Reset the process's peak resident memory to its current size; returns that size in KiB."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError as err:
        raise VaescopeError(f"cannot reset the peak memory mark ({err}); the scale benchmark needs Linux's "
                            "/proc/self/clear_refs") from err
    return _kib("VmRSS")


def peak_kib() -> int:
    """The process's peak resident memory since the last :func:`reset_peak`, KiB."""
    return _kib("VmHWM")


def stream(n: int, dim: int, batch_size: int, pool: int = POOL, seed: int = 0) -> Iterator[torch.Tensor]:
    """``n`` rows of ``dim`` float32 as batches ``(batch_size, dim)`` (the last one shorter): ``pool``
    batches drawn once from a generator seeded with ``seed``, handed out in turn."""
    generator = torch.Generator().manual_seed(seed)
    batches = [torch.randn(min(batch_size, n), dim, generator=generator) for _ in range(pool)]
    for i, start in enumerate(range(0, n, batch_size)):
        yield batches[i % pool][: min(batch_size, n - start)]


def scale_statistics(n: int = SCALE_N, dim: int = SCALE_DIM, batch_size: int = SCALE_BATCH, latent_dim: int = 16,
                     hidden: tuple[int, ...] = (256,), threads: int = 0, naive: bool = False) -> ScaleResult:
    """Time one :func:`latent_statistics` pass over a stream of ``n`` x ``dim`` and read its peak memory."""
    if n < 1 or dim < 1 or batch_size < 1:
        raise VaescopeError(f"scale benchmark: n={n}, dim={dim}, batch_size={batch_size}; each must be at least 1")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    used = torch.get_num_threads()
    try:
        torch.manual_seed(0)
        model = DenseVAE((dim,), hidden, latent_dim).eval()
        data: Any = stream(n, dim, batch_size)
        before = reset_peak()
        started = time.perf_counter()
        if naive:  # the control: the whole data in memory at once
            data = torch.cat(list(data))
        stats = latent_statistics(model, data, batch_size=batch_size)
        seconds = time.perf_counter() - started
        peak = peak_kib()
    finally:
        torch.set_num_threads(previous)
    if stats.n != n:
        raise AssertionError(f"the pass saw {stats.n} rows of {n}")  # a bug, not user input
    return ScaleResult(n, dim, batch_size, latent_dim, tuple(hidden), used, seconds, (peak - before) / 1024,
                       n * dim * 4 / 2**20, naive)


@dataclass(frozen=True)
class BoundTime:
    """The importance-weighted bound at K = ``k`` over ``n`` MNIST test digits with a dense16 decoder."""

    n: int
    k: int
    threads: int
    seconds: float
    bound: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        return (f"importance-weighted bound, K = {self.k:,}, over {self.n:,} MNIST test digits, dense16 "
                f"(784-256-64-32-16, untrained weights of seed 0), {self.threads} thread(s): {self.seconds:.1f} s "
                f"(bound {self.bound:.2f} nats)")


def bound_time(n: int = 10_000, k: int = 1_000, threads: int = 0) -> BoundTime:
    """Time :func:`vaescope.measures.bound.importance_weighted_bound` K = 1,000 over
    the first ``n`` MNIST test digits (the time does not depend on the weights, only on the shapes)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    used = torch.get_num_threads()
    try:
        torch.manual_seed(0)
        model = DenseVAE((1, 28, 28), (256, 64, 32), 16).eval()
        x = load_dataset("mnist").x_test[:n]
        started = time.perf_counter()
        result = importance_weighted_bound(model, x, ks=(k,))
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(previous)
    return BoundTime(len(x), k, used, seconds, float(result.bounds[0]))
