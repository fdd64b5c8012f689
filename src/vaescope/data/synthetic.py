"""Images with known factors: ``--data synthetic:factors=K`` (K from 1 to 6). (``synthetic:linear=...``,
Gaussian vectors of a known covariance spectrum, is :mod:`vaescope.data.linear`; :func:`load_synthetic`
reads both.)

Each image is an elliptical ring drawn on a 28x28 canvas from K independent continuous factors,
each drawn uniformly in [0, 1] and mapped linearly onto a physical range (:data:`FACTORS`, in
this order; a factor beyond the K varied ones stays at the middle of its range):

==============  ================  =================================================
factor          range             meaning
==============  ================  =================================================
position_x      10 .. 18 px       horizontal centre of the ring
position_y      10 .. 18 px       vertical centre of the ring
size            3 .. 5 px         geometric mean of the two semi-axes, sqrt(a * b)
elongation      1.4 .. 2.6        ratio of the semi-axes a / b
angle           0 .. 90 degrees   rotation of the major axis from the horizontal
stroke          1 .. 3 px         width of the ring's line
==============  ================  =================================================

How a pixel is drawn: pixel (row r, column c) has its centre at (x, y) = (c + 0.5, r + 0.5).
In the ring's own frame, u = (x - cx) cos t + (y - cy) sin t and v = -(x - cx) sin t + (y - cy) cos t,
with semi-axes a = size * sqrt(elongation) along u and b = size / sqrt(elongation) along v.
The signed distance of the pixel centre to the ellipse is approximated to first order by
d = (rho - 1) / |grad rho| with rho = sqrt((u/a)^2 + (v/b)^2) (exact for a circle), and the pixel's
ink is the box-filtered coverage of a line of width ``stroke``: clip(stroke / 2 + 0.5 - |d|, 0, 1),
stored as round(255 * ink). So the ring's centroid is its centre, and its mass grows with its size
(the perimeter) and its stroke.

The factors come from ``numpy.random.default_rng(seed)`` (``synthetic:factors=K,seed=S``, seed 0 by
default): one (70000, K) draw, the first 60,000 rows for training and the last 10,000 for testing.
Rendering is vectorised over images; the result is cached once as a uint8 ``.npz`` (images and
the factors) in ``$VAESCOPE_DATA`` or ``~/.cache/vaescope``, written atomically.
"""

from __future__ import annotations

import io
import re
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaescope.core.errors import VaescopeError
from vaescope.core.storage import atomic_write_bytes
from vaescope.data.dataset import Dataset, cache_dir
from vaescope.data.linear import load_linear

SIDE = 28
N_TRAIN, N_TEST = 60000, 10000
RENDER_VERSION = 1  # part of the cache file's name: a change of drawing makes a new cache
_CHUNK = 2000  # images rendered at once: (2000, 28, 28) float64 arrays, ~12 MB each


@dataclass(frozen=True)
class Factor:
    name: str
    low: float
    high: float
    unit: str

    def physical(self, value: np.ndarray | float) -> np.ndarray:
        """Map a factor in [0, 1] onto its physical range."""
        return self.low + np.asarray(value, dtype=np.float64) * (self.high - self.low)


FACTORS: tuple[Factor, ...] = (
    Factor("position_x", 10.0, 18.0, "px"),
    Factor("position_y", 10.0, 18.0, "px"),
    Factor("size", 3.0, 5.0, "px"),
    Factor("elongation", 1.4, 2.6, ""),
    Factor("angle", 0.0, 90.0, "degrees"),
    Factor("stroke", 1.0, 3.0, "px"),
)


@dataclass(frozen=True)
class FactorSet:
    """The factors behind a synthetic dataset: ``train`` ``(60000, K)`` and ``test`` ``(10000, K)``
    float32 in [0, 1], columns named by ``names`` (the first K of :data:`FACTORS`)."""

    names: tuple[str, ...]
    train: np.ndarray
    test: np.ndarray


# ---------------------------------------------------------------------------- rendering

def render(factors: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Draw one ring per row of ``factors`` ``(N, K)`` in [0, 1] (K <= 6, columns in the order of
    :data:`FACTORS`); returns uint8 images ``(N, 1, side, side)``. Positions scale with ``side / 28``."""
    factors = np.asarray(factors, dtype=np.float64)
    if factors.ndim != 2 or not 1 <= factors.shape[1] <= len(FACTORS):
        raise VaescopeError(f"factors must be (N, K) with K from 1 to {len(FACTORS)}, got shape {factors.shape}")
    out = np.empty((len(factors), 1, side, side), dtype=np.uint8)
    for start in range(0, len(factors), _CHUNK):
        out[start : start + _CHUNK, 0] = _render_chunk(factors[start : start + _CHUNK], side)
    return out


def _physical(factors: np.ndarray) -> list[np.ndarray]:
    """The six physical parameters, each ``(N, 1, 1)``: varied ones from the columns, the rest mid-range."""
    n, k = factors.shape
    values = []
    for j, factor in enumerate(FACTORS):
        column = factors[:, j] if j < k else np.full(n, 0.5)
        values.append(factor.physical(column)[:, None, None])
    return values


def _render_chunk(factors: np.ndarray, side: int) -> np.ndarray:
    cx, cy, size, elongation, angle, stroke = _physical(factors)
    scale = side / SIDE
    cx, cy, size, stroke = cx * scale, cy * scale, size * scale, stroke * scale
    a, b = size * np.sqrt(elongation), size / np.sqrt(elongation)  # semi-axes along u and v
    t = np.deg2rad(angle)
    centres = np.arange(side, dtype=np.float64) + 0.5
    x, y = centres[None, None, :], centres[None, :, None]  # broadcast to (N, side, side)
    dx, dy = x - cx, y - cy
    u = dx * np.cos(t) + dy * np.sin(t)
    v = -dx * np.sin(t) + dy * np.cos(t)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    # |grad rho| = sqrt((u/a^2)^2 + (v/b^2)^2) / rho; d = (rho - 1) / |grad rho|
    gradient = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2)
    distance = (rho - 1.0) * rho / np.maximum(gradient, 1e-12)
    ink = np.clip(stroke / 2 + 0.5 - np.abs(distance), 0.0, 1.0)
    return np.rint(ink * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------- source and cache

_SOURCE = re.compile(r"synthetic:factors=(\d+)(?:,seed=(\d+))?")


def parse_source(source: str) -> tuple[int, int]:
    """``synthetic:factors=K[,seed=S]`` -> (K, S)."""
    match = _SOURCE.fullmatch(source.strip().lower())
    if match is None:
        raise VaescopeError(
            f"data source {source!r} is not of the form synthetic:factors=K or synthetic:factors=K,seed=S"
        )
    k, seed = int(match.group(1)), int(match.group(2) or 0)
    if not 1 <= k <= len(FACTORS):
        raise VaescopeError(f"data source {source!r}: factors must be from 1 to {len(FACTORS)}, got {k}")
    return k, seed


def draw_factors(k: int, seed: int, n: int = N_TRAIN + N_TEST) -> np.ndarray:
    """The ``(n, k)`` float32 factors in [0, 1] for ``seed``: train rows first, then test rows."""
    return np.random.default_rng(seed).random((n, k)).astype(np.float32)


def cache_path(k: int, seed: int) -> Path:
    return cache_dir() / f"synthetic-v{RENDER_VERSION}-factors{k}-seed{seed}.npz"


def _read_cache(path: Path, k: int) -> dict[str, np.ndarray] | None:
    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ("x_train", "x_test", "factors_train", "factors_test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):  # a damaged cache is rebuilt
        return None
    shapes = {"x_train": (N_TRAIN, 1, SIDE, SIDE), "x_test": (N_TEST, 1, SIDE, SIDE),
              "factors_train": (N_TRAIN, k), "factors_test": (N_TEST, k)}
    if any(arrays[key].shape != shape for key, shape in shapes.items()):
        return None
    return arrays


def _arrays(k: int, seed: int) -> dict[str, np.ndarray]:
    """Images and factors from the cache, rendering and caching them on first use."""
    path = cache_path(k, seed)
    if path.is_file():
        cached = _read_cache(path, k)
        if cached is not None:
            return cached
        print(f"vaescope: the synthetic cache {path} is damaged; rebuilding it", file=sys.stderr)
    factors = draw_factors(k, seed)
    images = render(factors)
    arrays = {"x_train": images[:N_TRAIN], "x_test": images[N_TRAIN:],
              "factors_train": factors[:N_TRAIN], "factors_test": factors[N_TRAIN:]}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return arrays


def load_synthetic(source: str) -> Dataset:
    """The dataset ``synthetic:factors=K[,seed=S]``: 60,000 train and 10,000 test rings, no labels; or
    ``synthetic:linear=...``: Gaussian vectors of a known spectrum (:func:`vaescope.data.linear.load_linear`)."""
    if str(source).strip().lower().startswith("synthetic:linear="):
        return load_linear(source)
    k, seed = parse_source(source)
    arrays = _arrays(k, seed)
    name = f"synthetic-factors{k}" + (f"-seed{seed}" if seed else "")
    return Dataset(name, arrays["x_train"], None, arrays["x_test"], None)


def load_factors(source: str) -> FactorSet:
    """The factors behind ``synthetic:factors=K[,seed=S]`` (rendered and cached on first use)."""
    k, seed = parse_source(source)
    arrays = _arrays(k, seed)
    return FactorSet(tuple(f.name for f in FACTORS[:k]), arrays["factors_train"], arrays["factors_test"])


def is_synthetic(source: str) -> bool:
    return str(source).strip().lower().startswith("synthetic:")


def has_factors(source: str) -> bool:
    """Whether ``source`` is ``synthetic:factors=...``, data whose factors :func:`load_factors` gives."""
    return str(source).strip().lower().startswith("synthetic:factors=")


# ---------------------------------------------------------------------------- analysis

def factor_correlations(mu: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Pearson correlation of every latent mean with every factor: ``mu`` ``(N, D)``,
    ``factors`` ``(N, K)`` -> ``(D, K)``; a constant column correlates 0 with everything."""
    mu = np.asarray(mu, dtype=np.float64)
    factors = np.asarray(factors, dtype=np.float64)
    mu_c = mu - mu.mean(0)
    f_c = factors - factors.mean(0)
    norms = np.sqrt((mu_c**2).sum(0))[:, None] * np.sqrt((f_c**2).sum(0))[None, :]
    cov = mu_c.T @ f_c
    return np.divide(cov, norms, out=np.zeros_like(cov), where=norms > 0)


def factor_r2(mu: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """How much of each factor the latent means explain together, linearly: the R^2 of a least-squares
    fit of each factor ``(N, K)`` on ``mu`` ``(N, D)`` with an intercept -> ``(K,)`` in [0, 1]."""
    mu = np.asarray(mu, dtype=np.float64)
    factors = np.asarray(factors, dtype=np.float64)
    design = np.column_stack([mu, np.ones(len(mu))])
    coef, *_ = np.linalg.lstsq(design, factors, rcond=None)
    residual = ((factors - design @ coef) ** 2).sum(0)
    total = ((factors - factors.mean(0)) ** 2).sum(0)
    return np.clip(1.0 - np.divide(residual, total, out=np.zeros_like(total), where=total > 0), 0.0, 1.0)


def factor_matches(correlations: np.ndarray, active: np.ndarray) -> list[dict[str, float | int | None]]:
    """For each factor (column of ``correlations`` ``(D, K)``), the active variable with the largest
    |correlation|: ``[{"variable": j or None, "correlation": r}]``; ``active`` is ``(D,)`` bool."""
    active = np.asarray(active, dtype=bool)
    matches: list[dict[str, float | int | None]] = []
    for k in range(correlations.shape[1]):
        if not active.any():
            matches.append({"variable": None, "correlation": 0.0})
            continue
        scores = np.where(active, np.abs(correlations[:, k]), -1.0)
        j = int(np.argmax(scores))
        matches.append({"variable": j, "correlation": float(correlations[j, k])})
    return matches
