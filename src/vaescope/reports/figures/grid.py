"""A grid of images as a PNG: generated samples, ten a row."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.image import imsave

from vaescope.core.storage import atomic_write_bytes


def image_grid(images: np.ndarray, per_row: int = 10) -> np.ndarray:
    """``(N, C, H, W)`` in [0, 1] -> one ``(rows H, per_row W, C)`` array, rows filled left to right
    (the last row padded with 0)."""
    images = np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)
    n, c, h, w = images.shape
    rows = -(-n // per_row)
    grid = np.zeros((rows * h, per_row * w, c), dtype=np.float32)
    for i in range(n):
        r, k = divmod(i, per_row)
        grid[r * h : (r + 1) * h, k * w : (k + 1) * w] = images[i].transpose(1, 2, 0)
    return grid


def save_grid(images: np.ndarray, path: str | Path, per_row: int = 10) -> Path:
    """Write :func:`image_grid` of ``images`` as a PNG (atomically), one pixel per pixel."""
    grid = image_grid(images, per_row)
    buffer = io.BytesIO()
    if grid.shape[2] == 1:
        imsave(buffer, grid[..., 0], cmap="gray", vmin=0.0, vmax=1.0, format="png")
    else:
        imsave(buffer, grid, format="png")
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
