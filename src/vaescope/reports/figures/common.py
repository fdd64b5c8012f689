"""Shared figure helpers: a pyplot-free Figure factory, the verdict colours, PNG output.

Figures are built with :class:`matplotlib.figure.Figure` directly, never through pyplot, so no
global state or GUI backend is involved and figures are freed as soon as they are dropped.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vaescope.core.storage import atomic_write_bytes

ACTIVE_COLOR = "#1f5fa8"    # blue: active variables
INACTIVE_COLOR = "#d62728"  # red: inactive variables, as the sparsity article highlights them
NEUTRAL_COLOR = "#555555"
DPI = 110


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches with a constrained layout."""
    return Figure(figsize=(width, height), layout="constrained")


def verdict_colors(active: np.ndarray) -> list[str]:
    """One colour per variable: ``(D,)`` bool -> list of D colours."""
    return [ACTIVE_COLOR if a else INACTIVE_COLOR for a in np.asarray(active, dtype=bool)]


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_png(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG (atomically) and return the path."""
    path = Path(path)
    atomic_write_bytes(path, png_bytes(fig, dpi))
    return path


def image_row(ax: Axes, images: np.ndarray, gap: int = 2) -> None:
    """Draw ``(N, C, H, W)`` images in [0, 1] side by side on ``ax`` (grey for one channel)."""
    images = np.asarray(images)
    n, c, h, w = images.shape
    # gaps: light grey between digits drawn dark on white (gray_r), white for colour images
    strip = np.full((h, n * w + (n - 1) * gap, c), 0.12 if c == 1 else 1.0)
    for i in range(n):
        strip[:, i * (w + gap) : i * (w + gap) + w] = images[i].transpose(1, 2, 0)
    if c == 1:
        ax.imshow(strip[..., 0], cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.clip(strip, 0.0, 1.0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
