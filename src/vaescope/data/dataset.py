"""Datasets: what every source ends as, the entry point, the checks, binarisation.

Every source ends as a :class:`Dataset` of images shaped ``(N, C, H, W)`` with values in [0, 1]
(stored as uint8 when the source is 8-bit, float32 otherwise), or of vectors ``(N, D)`` float32 of any
range (an ``.npz`` whose ``x_train`` is a 2-D float array that is not flattened square images in
[0, 1]), and optional integer labels. The
sources: the embedded MNIST default (:mod:`vaescope.data.mnist`), Fashion-MNIST, IDX directories and
``.npz`` files (:mod:`vaescope.data.readers`, every read bounded by ``data.max_bytes``), and images
drawn from known factors (:mod:`vaescope.data.synthetic`). Bad input becomes one :class:`VaescopeError`
line that names the file and the fix.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaescope.core.config import DataConfig
from vaescope.core.errors import VaescopeError

DEFAULT_MAX_BYTES = DataConfig.max_bytes  # data.max_bytes: the most bytes one data file may hold
IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Dataset:
    """Images ``(N, C, H, W)`` in [0, 1] (uint8 means value/255), or vectors ``(N, D)`` float32 of any
    range (:func:`is_vectors`), and labels ``(N,)`` or None. ``image_shape`` is the per-example shape,
    ``(D,)`` for vectors."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def is_vectors(self) -> bool:
        """True for vectors ``(N, D)``, False for images ``(N, C, H, W)``."""
        return self.x_train.ndim == 2

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        if name == "train":
            return self.x_train, self.y_train
        if name == "test":
            return self.x_test, self.y_test
        raise VaescopeError(f"unknown split {name!r}; use 'train' or 'test'")


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [0, 1]; float images pass through as float32 (shape kept)."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------- entry point

def cache_dir() -> Path:
    """``$VAESCOPE_DATA``, else ``$XDG_CACHE_HOME/vaescope``, else ``~/.cache/vaescope``."""
    if os.environ.get("VAESCOPE_DATA"):
        return Path(os.environ["VAESCOPE_DATA"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vaescope"




# ---------------------------------------------------------------------------- checks

def is_vectors(x: np.ndarray) -> bool:
    """A 2-D float array is vectors ``(N, D)`` unless D is a square and every value lies in [0, 1]
    (then it is flattened square images, read as ``(N, 1, H, W)`` as before)."""
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        return False
    side = int(round(x.shape[1] ** 0.5))
    in_unit = bool(x.size) and float(np.nanmin(x)) >= 0.0 and float(np.nanmax(x)) <= 1.0
    return side * side != x.shape[1] or not in_unit


def _check_vectors(x: np.ndarray, where: str) -> np.ndarray:
    """Vectors ``(N, D)`` float32, finite."""
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise VaescopeError(f"{where} contains NaN or infinite values; clean the data")
    if len(x) == 0 or x.shape[1] == 0:
        raise VaescopeError(f"{where} holds no vectors (shape {x.shape}); check the file")
    return x


def _check_images(x: np.ndarray, where: str, vectors: bool = True) -> np.ndarray:
    """Normalise to ``(N, C, H, W)`` and check values; uint8 kept, floats must lie in [0, 1]. With ``vectors``,
    a 2-D float array that is not flattened square images in [0, 1] is vectors ``(N, D)`` (:func:`is_vectors`)."""
    if vectors and is_vectors(x):
        return _check_vectors(x, where)
    if x.dtype == np.uint8:
        pass
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise VaescopeError(f"{where} contains NaN or infinite values; clean the data")
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise VaescopeError(
                f"{where} has values in [{x.min():g}, {x.max():g}], outside [0, 1]; "
                "scale images to [0, 1] or store them as uint8 (vectors of any range: an (N, D) float array)"
            )
    else:
        raise VaescopeError(f"{where} has dtype {x.dtype}; store images as uint8 or float in [0, 1], "
                            "vectors as float (N, D)")
    if x.ndim == 2:  # (N, D): a flattened square image
        side = int(round(x.shape[1] ** 0.5))
        if side * side != x.shape[1]:
            raise VaescopeError(
                f"{where} has shape {x.shape}: flattened images must be square; reshape to (N, H, W), "
                "or store vectors as float (N, D)"
            )
        x = x.reshape(len(x), 1, side, side)
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (N, H, W, C) -> (N, C, H, W)
    elif x.ndim != 4:
        raise VaescopeError(f"{where} has shape {x.shape}; images must be (N, H, W) or (N, C, H, W)")
    if len(x) == 0 or min(x.shape[1:]) == 0:
        raise VaescopeError(f"{where} holds no images (shape {x.shape}); check the file")
    return x


def _check_labels(y: np.ndarray | None, n: int, where: str) -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise VaescopeError(f"{where} has shape {y.shape} but the images number {n}; they must match")
    if not np.issubdtype(y.dtype, np.integer):
        raise VaescopeError(f"{where} has dtype {y.dtype}; labels must be integers")
    return y.astype(np.int64, copy=False)


def _make(name: str, x_train: Any, y_train: Any, x_test: Any, y_test: Any, where: str,
          vectors: bool = True) -> Dataset:
    """A checked :class:`Dataset`; ``vectors`` False for sources that hold images only (IDX, MNIST)."""
    x_train = _check_images(np.asarray(x_train), f"{where}: x_train", vectors)
    x_test = np.asarray(x_test)
    if vectors and x_train.ndim == 2 and x_test.ndim == 2 and np.issubdtype(x_test.dtype, np.floating):
        x_test = _check_vectors(x_test, f"{where}: x_test")  # vectors: both splits, whatever their range
    else:
        x_test = _check_images(x_test, f"{where}: x_test")
    if x_train.ndim != x_test.ndim:
        raise VaescopeError(f"{where}: x_train is {'vectors' if x_train.ndim == 2 else 'images'} {x_train.shape[1:]} "
                            f"but x_test {'vectors' if x_test.ndim == 2 else 'images'} {x_test.shape[1:]}; store both "
                            "splits alike (vectors: (N, D) float)")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise VaescopeError(
            f"{where}: x_train images are {x_train.shape[1:]} but x_test images are "
            f"{x_test.shape[1:]}; they must have the same shape"
        )
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=_check_labels(y_train, len(x_train), f"{where}: y_train"),
        x_test=x_test,
        y_test=_check_labels(y_test, len(x_test), f"{where}: y_test"),
    )


def check_dataset(data: Dataset) -> Dataset:
    """The checks the file readers make (shape, dtype, [0, 1], no NaN or Inf), for a
    :class:`Dataset` built in Python; returns it normalised to ``(N, C, H, W)``."""
    return _make(data.name, data.x_train, data.y_train, data.x_test, data.y_test, f"dataset {data.name!r}")


# ---------------------------------------------------------------------------- binarisation

# Static binarisation draws one fixed binary image per grey-level image, with the same seed for
# every run (one per split), so that every run reads the same binarised digits, as the likelihood
# literature's fixed binarised MNIST (e.g. Burda et al., "Importance Weighted Autoencoders").
BINARIZE_SEEDS = {"train": 0, "test": 1}
_BINARIZE_CHUNK = 2**22  # pixels per draw: memory bounded whatever the split's size


def binarize_static(x: np.ndarray, seed: int) -> np.ndarray:
    """One Bernoulli sample of each image: a pixel is on with probability its grey level.

    ``x``: ``(N, ...)`` uint8 (grey level = value / 255) or float in [0, 1]. Returns the same shape
    and dtype with pixels 0 or 255 (uint8) or 0.0 or 1.0 (float); the same ``seed`` gives the same
    images.
    """
    x = np.asarray(x)
    rng = np.random.default_rng(seed)
    out = np.empty_like(x)
    on_value = 255 if x.dtype == np.uint8 else 1
    rows = max(1, _BINARIZE_CHUNK // max(1, math.prod(x.shape[1:])))
    for start in range(0, len(x), rows):
        part = x[start : start + rows]
        grey = part.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else part
        out[start : start + rows] = (rng.random(part.shape, dtype=np.float32) < grey) * on_value
    return out


def binarize_dynamic(batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh Bernoulli sample of a float batch ``(B, C, H, W)`` in [0, 1], on its device: each pixel
    is 1 with probability its grey level (``generator``: the run's noise generator)."""
    return torch.bernoulli(batch, generator=generator)


def split_images(data: Dataset, split: str, binarize: str = "none") -> np.ndarray:
    """The images of ``split`` as a run with ``data.binarize = binarize`` reads them.

    ``none``: as stored. ``static``: :func:`binarize_static` with the split's fixed seed.
    ``dynamic``: the training split as stored (training samples each batch afresh with
    :func:`binarize_dynamic`), the test split one fixed sample, as in the literature, so that
    likelihoods are measured on the same binary test images whichever binarisation trained the model.
    """
    x, _ = data.split(split)
    if binarize == "none" or (binarize == "dynamic" and split == "train"):
        return x
    if binarize not in ("dynamic", "static"):
        raise VaescopeError(f"data.binarize is {binarize!r}; use 'none', 'dynamic' or 'static'")
    return binarize_static(x, BINARIZE_SEEDS[split])
