"""Shared fixtures: a tiny synthetic image dataset and a tiny config that trains in a second."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vaescope.core import config as config_mod
from vaescope.data.dataset import Dataset


def make_images(n: int, seed: int, side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Blurry bars at one of four positions: structure a tiny VAE can learn. uint8 ``(n, side, side)``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=n)
    x = np.zeros((n, side, side), dtype=np.float32)
    for i, k in enumerate(labels):
        x[i, :, 2 * k : 2 * k + 2] = 1.0
    x = np.clip(x * rng.uniform(0.6, 1.0, size=(n, 1, 1)) + rng.uniform(0, 0.2, size=x.shape), 0, 1)
    return (x * 255).astype(np.uint8), labels.astype(np.int64)


@pytest.fixture(scope="session")
def tiny_dataset() -> Dataset:
    x_train, y_train = make_images(512, 0)
    x_test, y_test = make_images(128, 1)
    return Dataset("tiny", x_train[:, None], y_train, x_test[:, None], y_test)


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x_train, y_train = make_images(512, 0)
    x_test, y_test = make_images(128, 1)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


TINY_OVERRIDES = [
    "model.hidden=[32, 16]", "model.latent_dim=4", "train.epochs=3", "train.batch_size=64",
    "train.trace_subset=64", "train.trace_every=2", "train.threads=1",
]


@pytest.fixture()
def tiny_config(tiny_npz: Path) -> config_mod.Config:
    return config_mod.resolve("dense16", overrides=TINY_OVERRIDES + [f"data.source={tiny_npz}"])


class LogLines(list):
    """Collects the messages of the ``vaescope`` logger (progress lines) while attached."""

    def __enter__(self) -> "LogLines":
        import logging

        class _Handler(logging.Handler):
            def emit(inner, record: logging.LogRecord) -> None:  # noqa: N805
                self.append(record.getMessage())

        self._handler = _Handler()
        self._logger = logging.getLogger("vaescope")
        self._level = self._logger.level
        self._logger.addHandler(self._handler)
        self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._level)
