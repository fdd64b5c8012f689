import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from vaescope.core.errors import VaescopeError
from vaescope.data import mnist as mnist_mod
from vaescope.data import sources
from vaescope.data.mnist import read_mnist_pickle
from vaescope.data.readers import load_idx_dir, load_npz, read_idx
from vaescope.data.sources import load_dataset


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    type_code = {np.uint8: 0x08, np.int8: 0x09}[array.dtype.type]
    raw = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if gz:
        raw = gzip.compress(raw)
        path = path.with_name(path.name + ".gz")
    path.write_bytes(raw)
    return path


def write_idx_dir(directory: Path, n_train: int = 6, n_test: int = 4, gz: bool = False) -> Path:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 5, 7), dtype=np.uint8), gz)
    write_idx(directory / "train-labels-idx1-ubyte", rng.integers(0, 10, n_train, dtype=np.uint8), gz)
    write_idx(directory / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 5, 7), dtype=np.uint8), gz)
    write_idx(directory / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test, dtype=np.uint8), gz)
    return directory


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_round_trip(tmp_path, gz):
    directory = write_idx_dir(tmp_path / "set", gz=gz)
    data = load_dataset(directory)
    assert data.x_train.shape == (6, 1, 5, 7) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (4, 1, 5, 7)
    assert data.y_train.dtype == np.int64 and len(data.y_test) == 4
    raw = read_idx(next(directory.glob("train-images*")))
    np.testing.assert_array_equal(raw, data.x_train[:, 0])


def test_idx_wrong_magic_is_refused(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(b"\x12\x34\x08\x03" + b"\0" * 40)
    with pytest.raises(VaescopeError, match=r"x\.idx does not start with an IDX magic"):
        read_idx(path)


def test_idx_truncated_file_is_refused(tmp_path):
    path = write_idx(tmp_path / "x.idx", np.zeros((10, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(VaescopeError, match="truncated or corrupt"):
        read_idx(path)


def test_idx_missing_file_names_the_file(tmp_path):
    directory = write_idx_dir(tmp_path / "set")
    (directory / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(VaescopeError, match="lacks t10k-labels-idx1-ubyte"):
        load_idx_dir(directory)


def test_idx_label_count_mismatch_is_refused(tmp_path):
    directory = write_idx_dir(tmp_path / "set")
    write_idx(directory / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(VaescopeError, match="y_train has shape"):
        load_idx_dir(directory)


def test_npz_uint8_and_float(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, x_train=np.zeros((3, 4, 4), np.uint8), x_test=np.ones((2, 4, 4), np.float64))
    data = load_npz(path)
    assert data.x_train.dtype == np.uint8 and data.x_test.dtype == np.float32
    assert data.x_test.shape == (2, 1, 4, 4) and data.y_train is None


@pytest.mark.parametrize("bad, message", [
    (np.full((2, 4, 4), 1.5), r"values in \[1.5, 1.5\], outside \[0, 1\]"),
    (np.full((2, 4, 4), -0.1), "outside"),
    (np.array([[[np.nan] * 4] * 4] * 2), "NaN"),
    (np.zeros((2, 4, 4), np.int32), "dtype int32"),
    (np.zeros((2, 15), np.uint8), "must be square"),
    (np.zeros((2, 15)), "x_train is vectors"),  # float (N, D): vectors, but x_test holds images
])
def test_npz_bad_values_are_refused(tmp_path, bad, message):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=bad, x_test=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(VaescopeError, match=message) as info:
        load_npz(path)
    assert "bad.npz" in str(info.value)


def test_npz_shape_mismatch_and_missing_key(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, x_train=np.zeros((2, 4, 4), np.uint8), x_test=np.zeros((2, 5, 5), np.uint8))
    with pytest.raises(VaescopeError, match="same shape"):
        load_npz(path)
    np.savez(path, x_train=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(VaescopeError, match="lacks x_test"):
        load_npz(path)


def test_npz_object_arrays_are_refused(tmp_path):
    path = tmp_path / "o.npz"
    np.savez(path, x_train=np.array([object()], dtype=object), x_test=np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(VaescopeError, match="object arrays"):
        load_npz(path)


def test_missing_and_unknown_sources(tmp_path):
    with pytest.raises(VaescopeError, match="nothing.npz does not exist"):
        load_dataset(tmp_path / "nothing.npz")
    with pytest.raises(VaescopeError, match="dataset 'nothing' not found"):
        load_dataset("nothing")
    (tmp_path / "file.txt").write_text("hi")
    with pytest.raises(VaescopeError, match="neither a directory of IDX files nor an .npz"):
        load_dataset(tmp_path / "file.txt")


class _System:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_os_system(tmp_path):
    path = tmp_path / "evil.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(_System())))
    with pytest.raises(VaescopeError, match=r"asks to load posix\.system|asks to load os\.system"):
        read_mnist_pickle(path, check_hash=False)


def _mnist_like_pickle(x_scale: float = 1.0) -> bytes:
    rng = np.random.default_rng(0)
    parts = []
    for n in (5, 3, 4):
        x = (rng.integers(0, 256, (n, 784)) / 256.0 * x_scale).astype(np.float32)
        parts.append((x, rng.integers(0, 10, n).astype(np.int64)))
    return gzip.compress(pickle.dumps(tuple(parts), protocol=2))


def test_restricted_unpickler_reads_numpy_arrays(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(_mnist_like_pickle())
    data = read_mnist_pickle(path, check_hash=False)
    assert data.x_train.shape == (8, 1, 28, 28) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (4, 1, 28, 28)
    with pytest.raises(VaescopeError, match="SHA-256"):
        read_mnist_pickle(path)  # not the real file


def test_mnist_pickle_with_out_of_range_values_is_refused(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(_mnist_like_pickle(x_scale=3.0))
    with pytest.raises(VaescopeError, match="outside"):
        read_mnist_pickle(path, check_hash=False)


def test_interrupted_cache_write_leaves_no_cache(tmp_path, monkeypatch):
    """The MNIST cache is written atomically: a failure mid-write leaves no (bad) cache file."""
    monkeypatch.setenv("VAESCOPE_DATA", str(tmp_path))
    pkl = tmp_path / "mnist.pkl.gz"
    pkl.write_bytes(_mnist_like_pickle())
    monkeypatch.setattr(mnist_mod, "_locate_mnist_pickle", lambda: pkl)
    monkeypatch.setattr(mnist_mod, "read_mnist_pickle", lambda p, **kw: read_mnist_pickle(p, check_hash=False, **kw))

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(VaescopeError, match="cannot write .*mnist.npz.*free some disk space"):
        mnist_mod.load_mnist()
    assert not (tmp_path / "mnist.npz").exists()
    assert not list(tmp_path.glob(".mnist.npz*"))  # no temporary left behind


@pytest.mark.slow
def test_real_mnist_standard_split_and_order():
    data = load_dataset("mnist")
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.x_train.dtype == np.uint8 and data.x_train.max() == 255
    assert data.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert data.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(data.y_train).tolist()[:2] == [5923, 6742]


@pytest.mark.skipif(not sources.FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package():
    data = load_dataset("fashion-mnist")
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]


def test_fashion_mnist_missing_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(VaescopeError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
