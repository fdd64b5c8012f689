"""Where a dataset comes from: a name (``mnist``, ``fashion-mnist``, ``synthetic:...``) or a path."""

from __future__ import annotations

import os
from pathlib import Path

from vaescope.core.errors import VaescopeError
from vaescope.data.dataset import DEFAULT_MAX_BYTES, Dataset
from vaescope.data.mnist import load_mnist
from vaescope.data.readers import load_idx_dir, load_npz
from vaescope.data.synthetic import load_synthetic

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist

def load_dataset(source: str | os.PathLike[str] = "mnist", max_bytes: int = DEFAULT_MAX_BYTES) -> Dataset:
    """Load a dataset by name (``mnist``, ``fashion-mnist``, ``synthetic:factors=K``,
    ``synthetic:linear=...``) or path (IDX directory, ``.npz``)."""

    text = str(source)
    if text.lower() == "mnist":
        return load_mnist(max_bytes)
    if text.lower().startswith("synthetic:"):  # rings drawn from K known factors, or linear-Gaussian vectors
        return load_synthetic(text)
    if text.lower() in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        if not FASHION_MNIST_DIR.is_dir():
            raise VaescopeError(
                f"Fashion-MNIST not found in {FASHION_MNIST_DIR}; install the Debian package "
                "dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
            )
        return load_idx_dir(FASHION_MNIST_DIR, name="fashion-mnist", max_bytes=max_bytes)
    path = Path(source).expanduser()
    if path.is_dir():
        return load_idx_dir(path, max_bytes=max_bytes)
    if path.suffix == ".npz":
        return load_npz(path, max_bytes)
    if not path.exists():
        raise VaescopeError(
            f"dataset {text!r} not found; use 'mnist', 'fashion-mnist', a directory of IDX files "
            "or an .npz file with x_train and x_test"
        )
    raise VaescopeError(
        f"dataset {path} is neither a directory of IDX files nor an .npz file; convert it to one"
    )

