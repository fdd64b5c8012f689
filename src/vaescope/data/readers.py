"""Bounded readers of data files: ``.npz`` archives and IDX files (plain or gzipped).

Each reader reads at most what the file's own header or zip directory promises, plus one byte to
detect excess, and checks the promise against ``data.max_bytes`` before it allocates anything: a
decompression bomb or an absurd header is refused in one line, with no memory spent on it.
"""

from __future__ import annotations

import gzip
import itertools
import math
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from vaescope.core.errors import VaescopeError
from vaescope.core.storage import format_bytes, read_at_most
from vaescope.data.dataset import DEFAULT_MAX_BYTES, IDX_NAMES, Dataset, _make

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
                 arrays["y_test"], str(directory), vectors=False)
