"""Bounded reads: decompression bombs and oversized inputs are refused before memory is spent.

The bombs are built here in about a second each: a 16 MiB block of zeros is deflated once after
a full flush (which makes the block independent of what came before) and the compressed block
is repeated, so a stream of 2 MB inflates to 2 GiB. Each read runs in a child process that
reports its peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) before and
after: a refusal must cost less than 200 MB above that baseline.
"""

from __future__ import annotations

import functools
import json
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from vaescope.core import config as config_mod
from vaescope.core.errors import VaescopeError
from vaescope.core.storage import TEXT_MAX_BYTES, read_json
from vaescope.data.readers import load_npz, read_idx
from vaescope.data.sources import load_dataset

GiB = 2**30
BLOCK = 2**24  # 16 MiB of zeros per repeated deflate block
PEAK_LIMIT_KB = 200 * 1024  # ru_maxrss is in KiB on Linux


# ---------------------------------------------------------------------------- building bombs

def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32 of A + B from crc32(A), crc32(B) and len(B): zlib's crc32_combine (GF(2) matrices
    that append zero bits), which Python's zlib does not expose. Lets a 2 GiB CRC cost microseconds."""
    def times(matrix: list[int], vector: int) -> int:
        total, row = 0, 0
        while vector:
            if vector & 1:
                total ^= matrix[row]
            vector, row = vector >> 1, row + 1
        return total

    def square(matrix: list[int]) -> list[int]:
        return [times(matrix, matrix[n]) for n in range(32)]

    if length2 == 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    even = square(odd)  # two zero bits
    odd = square(even)  # four zero bits
    while True:
        even = square(odd)
        if length2 & 1:
            crc1 = times(even, crc1)
        length2 >>= 1
        if not length2:
            break
        odd = square(even)
        if length2 & 1:
            crc1 = times(odd, crc1)
        length2 >>= 1
        if not length2:
            break
    return crc1 ^ crc2


@functools.cache
def zero_block() -> tuple[bytes, int]:
    """16 MiB of zeros deflated and fully flushed (byte-aligned, no history: the same bytes after
    any prefix that was fully flushed too), and their CRC-32."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(bytes(BLOCK)) + compressor.flush(zlib.Z_FULL_FLUSH), zlib.crc32(bytes(BLOCK))


def deflate_zeros(prefix: bytes, zeros: int) -> tuple[bytes, int, int]:
    """A raw deflate stream of ``prefix`` followed by ``zeros`` zero bytes (a multiple of 16 MiB);
    returns the stream, the CRC-32 and the length of what it inflates to."""
    assert zeros % BLOCK == 0 and zeros
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush()  # the final (empty) block
    block, crc_zeros = zero_block()
    length = BLOCK
    while length < zeros:  # the CRC of 2^k blocks by doubling
        crc_zeros, length = crc32_combine(crc_zeros, crc_zeros, length), 2 * length
    assert length == zeros, "a power-of-two number of blocks"
    return head + block * (zeros // BLOCK) + tail, crc32_combine(zlib.crc32(prefix), crc_zeros, zeros), len(prefix) + zeros


def gzip_zeros(prefix: bytes, zeros: int) -> bytes:
    """A gzip file (RFC 1952: header, deflate, CRC-32, length mod 2^32) of ``prefix`` + zeros."""
    stream, crc, size = deflate_zeros(prefix, zeros)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + stream + struct.pack("<II", crc, size % 2**32)


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    """An ``.npy`` version 1.0 header as numpy writes it, padded to a multiple of 64 bytes."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def zip_archive(members: list[tuple[str, bytes, int, int]], offsets: dict[str, int] | None = None) -> bytes:
    """A zip of deflated members ``(name, raw deflate, crc, declared size)``; ``offsets`` makes the
    central directory point a member at another member's local header (overlap)."""
    local, central = b"", b""
    starts = {}
    for name, data, crc, size in members:
        starts[name] = len(local)
        encoded = name.encode()
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data), size,
                             len(encoded), 0) + encoded + data
    for name, data, crc, size in members:
        encoded = name.encode()
        start = (offsets or {}).get(name, starts[name])
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(data), size,
                               len(encoded), 0, 0, 0, 0, 0, start) + encoded
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(local), 0)
    return local + central + end


def small_member(name: str, array: np.ndarray) -> tuple[str, bytes, int, int]:
    raw = npy_header(array.shape, array.dtype.str) + array.tobytes()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return name, compressor.compress(raw) + compressor.flush(), zlib.crc32(raw), len(raw)


IDX_UINT8 = 0x08


def idx_header(shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, IDX_UINT8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """Each file is about 2 MB and inflates to 2 GiB (plus its headers)."""
    folder = tmp_path_factory.mktemp("bombs")
    files = {
        # the header promises 8 GiB, more than the default data.max_bytes of 4 GiB
        "idx header promises 8 GiB": gzip_zeros(idx_header((8, 2**15, 2**15)), 2 * GiB),
        # the header promises 1000 images of 28x28 (784 kB): the payload goes on for 2 GiB
        "idx payload beyond its header": gzip_zeros(idx_header((1000, 28, 28)), 2 * GiB),
        # the header promises exactly the 2 GiB the payload holds: refused by a lower data.max_bytes
        "idx header promises 2 GiB": gzip_zeros(idx_header((2**11, 2**10, 2**10)), 2 * GiB),
    }
    for name, raw in files.items():
        (folder / f"{name}.gz").write_bytes(raw)
    # npz: x_train.npy declares 2 GiB in the zip directory and in its .npy header (a real zip bomb)
    stream, crc, size = deflate_zeros(npy_header((2**11, 2**10, 2**10)), 2 * GiB)
    test = small_member("x_test.npy", np.zeros((2, 4, 4), np.uint8))
    (folder / "npz declares 2 GiB.npz").write_bytes(zip_archive([("x_train.npy", stream, crc, size), test]))
    # npz: the directory and the .npy header both declare 784 kB, the stream inflates to 2 GiB
    header = npy_header((1000, 28, 28))
    stream, crc, _ = deflate_zeros(header, 2 * GiB)
    (folder / "npz inflates beyond its directory.npz").write_bytes(
        zip_archive([("x_train.npy", stream, crc, len(header) + 1000 * 28 * 28), test]))
    # npz: four names in the directory, all over one compressed stream of 512 MiB (2 GiB in all,
    # under the default limit: only the overlap gives it away)
    stream, crc, size = deflate_zeros(npy_header((2**9, 2**10, 2**10)), GiB // 2)
    names = ["x_train.npy", "y_train.npy", "x_test.npy", "y_test.npy"]
    (folder / "npz overlapping members.npz").write_bytes(_overlapping([(name, stream, crc, size) for name in names]))
    (folder / f"{CONTROL}.gz").write_bytes(gzip_zeros(b"", 256 * 2**20))
    return {path.stem if path.suffix == ".npz" else path.name[: -len(".gz")]: path for path in folder.iterdir()}


def _overlapping(members: list[tuple[str, bytes, int, int]]) -> bytes:
    """The first member's local header and data, with every central directory entry pointing at it."""
    name, data, crc, size = members[0]
    single = zip_archive([members[0]])
    local = single[: 30 + len(name) + len(data)]
    central = b""
    for other, _, _, _ in members:
        encoded = other.encode()
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(data), size,
                               len(encoded), 0, 0, 0, 0, 0, 0) + encoded
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(local), 0)
    return local + central + end


# ---------------------------------------------------------------------------- measuring in a child

# ru_maxrss survives exec: a child started by pytest begins with pytest's own high-water mark,
# which would hide growth below it. A fork starts a fresh mark at the current size, so each case
# runs in a fork of one child that has imported vaescope (the baseline includes numpy and torch).
CHILD = textwrap.dedent("""
    import gzip, json, os, resource, sys
    from vaescope.data.readers import load_npz, read_idx
    from vaescope.core.errors import VaescopeError
    readers = {"idx": read_idx, "npz": load_npz,
               "naive": lambda path, limit: gzip.decompress(open(path, "rb").read())}  # the control
    for line in sys.stdin:
        path, kind, limit = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            try:
                readers[kind](path, limit)
                outcome = "accepted"
            except VaescopeError as err:
                outcome = str(err)
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(json.dumps({"outcome": outcome, "growth_kb": after - before, "baseline_kb": before}), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
""")

DEFAULT = config_mod.DataConfig.max_bytes
CASES = {  # name: (reader, data.max_bytes, the refusal)
    "idx header promises 8 GiB": ("idx", DEFAULT, (
        r"its header \(shape \(8, 32768, 32768\)\) promises 8.0 GiB \(8589934592 bytes\), more than "
        r"data.max_bytes = 4.0 GiB; if the data is genuine raise the limit with --set data.max_bytes=8589934592")),
    "idx payload beyond its header": ("idx", DEFAULT, (
        r"holds more data than the 784000 bytes its header promises \(shape \(1000, 28, 28\)\); the file is "
        "corrupt or a decompression bomb")),
    "idx header promises 2 GiB": ("idx", GiB,
        r"promises 2.0 GiB \(2147483648 bytes\), more than data.max_bytes = 1.0 GiB"),
    "npz declares 2 GiB": ("npz", GiB,
        r"its members up to x_train.npy declare 2.0 GiB \(2147483776 bytes\), more than data.max_bytes = 1.0 GiB"),
    "npz inflates beyond its directory": ("npz", DEFAULT, "Bad CRC-32 for file 'x_train.npy'"),
    "npz overlapping members": ("npz", DEFAULT,
        "zip members x_test.npy and x_train.npy overlap, the mark of a zip bomb"),
}
CONTROL = "256 MiB gzip read whole"


@pytest.fixture(scope="module")
def bomb_reports(bombs) -> dict[str, dict]:
    """Every bomb read in one child process (one import), each case in a fork of it."""
    cases = [(str(bombs[name]), kind, limit) for name, (kind, limit, _) in CASES.items()]
    cases.append((str(bombs[CONTROL]), "naive", 0))
    lines = "".join(json.dumps(case) + "\n" for case in cases)
    done = subprocess.run([sys.executable, "-c", CHILD], input=lines, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(reports) == len(cases), done.stderr
    return dict(zip([*CASES, CONTROL], reports))


@pytest.mark.parametrize("name", list(CASES))
def test_a_bomb_is_refused_with_little_memory(bombs, bomb_reports, name):
    assert bombs[name].stat().st_size < 2.5e6  # a small file ...
    report = bomb_reports[name]
    assert report["outcome"] != "accepted" and "\n" not in report["outcome"]
    assert re.search(CASES[name][2], report["outcome"]), report["outcome"]
    assert report["growth_kb"] < PEAK_LIMIT_KB, report  # ... refused without inflating it
    # shown with -s: the figures of docs/reliability.md
    print(f"\n{name}: {bombs[name].stat().st_size / 1e6:.1f} MB file, peak {report['growth_kb'] / 1024:.1f} MiB "
          f"above a baseline of {report['baseline_kb'] / 1024:.0f} MiB")


def test_the_crc_of_a_bomb_is_zlibs(bombs):
    """Known answer for the builder: a 64 MiB bomb inflates (zlib, whole) to its prefix and zeros,
    with the CRC-32 zlib computes over them and gzip's trailer intact."""
    import gzip

    raw = gzip_zeros(b"prefix", 4 * BLOCK)
    assert len(raw) < 100_000
    assert gzip.decompress(raw) == b"prefix" + bytes(4 * BLOCK)
    for blocks in (1, 2, 8):
        _, crc, size = deflate_zeros(b"abc", blocks * BLOCK)
        assert crc == zlib.crc32(b"abc" + bytes(blocks * BLOCK)) and size == 3 + blocks * BLOCK


@pytest.mark.slow
def test_the_bombs_really_inflate_to_2_gib(bombs):
    """Known answer for the builder: streaming the gzip bomb through zlib yields 2 GiB + its header,
    and gzip's CRC-32 and length check pass (so the IDX refusal is not a damaged-file refusal)."""
    import gzip

    total = 0
    with gzip.open(bombs["idx payload beyond its header"]) as stream:
        while chunk := stream.read(BLOCK * 4):
            total += len(chunk)
    assert total == 2 * GiB + len(idx_header((1000, 28, 28)))


def test_the_measure_sees_a_naive_read(bomb_reports):
    """Control: the same measure, in the same child, around reading a 256 MiB gzip bomb whole as
    the reader before the bounds did (``gzip.decompress``), sees more than the bound: a small
    growth above means a bounded read, not a blind measure."""
    assert bomb_reports[CONTROL]["outcome"] == "accepted"
    assert bomb_reports[CONTROL]["growth_kb"] > 256 * 1024
    print(f"\n{CONTROL}: peak {bomb_reports[CONTROL]['growth_kb'] / 1024:.1f} MiB above the baseline")


# ---------------------------------------------------------------------------- limits in process

def test_an_idx_header_past_the_limit_is_refused_before_reading(tmp_path):
    path = tmp_path / "big-idx"
    path.write_bytes(idx_header((100, 28, 28)))  # promises 78,400 bytes, holds none
    with pytest.raises(VaescopeError, match=r"promises 76.6 KiB \(78400 bytes\), more than data.max_bytes = "
                                            r"1.0 KiB; .* --set data.max_bytes=131072"):
        read_idx(path, max_bytes=1024)
    with pytest.raises(VaescopeError, match="holds 0 data bytes but its header promises 78400"):
        read_idx(path)  # under the default limit: the missing data is what is refused


def test_dimensions_that_multiply_past_the_limit_are_refused(tmp_path):
    path = tmp_path / "huge-idx"
    path.write_bytes(idx_header((2**32 - 1,) * 4))  # ~3.4e38 bytes: no allocation is attempted
    with pytest.raises(VaescopeError, match="more than data.max_bytes"):
        read_idx(path)


def test_a_plain_idx_longer_than_its_header_is_refused(tmp_path):
    path = tmp_path / "long-idx"
    path.write_bytes(idx_header((2, 2)) + bytes(5))
    with pytest.raises(VaescopeError, match="holds 5 data bytes but its header promises 4"):
        read_idx(path)


def test_an_npz_within_the_limit_loads_and_one_byte_less_refuses(tmp_path):
    path = tmp_path / "a.npz"
    x_train, x_test = np.arange(48, dtype=np.uint8).reshape(3, 4, 4), np.ones((2, 4, 4), np.uint8)
    np.savez(path, x_train=x_train, x_test=x_test)
    declared = 2 * 128 + x_train.nbytes + x_test.nbytes  # numpy 1.0 headers are 128 bytes here
    data = load_npz(path, max_bytes=declared)
    assert np.array_equal(data.x_train[:, 0], x_train) and np.array_equal(data.x_test[:, 0], x_test)
    with pytest.raises(VaescopeError, match=f"declare {declared} bytes, more than data.max_bytes = {declared - 1} bytes"):
        load_npz(path, max_bytes=declared - 1)


def test_an_npz_header_that_disagrees_with_the_zip_directory_is_refused(tmp_path):
    path = tmp_path / "liar.npz"
    header = npy_header((2**20, 28, 28))  # promises 822 MB; the directory declares 16 bytes of data
    member = (header + bytes(16))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = compressor.compress(member) + compressor.flush()
    path.write_bytes(zip_archive([("x_train.npy", data, zlib.crc32(member), len(member)),
                                  small_member("x_test.npy", np.zeros((1, 2, 2), np.uint8))]))
    with pytest.raises(VaescopeError, match=r"member x_train.npy: its header promises 822083584 data bytes .* but "
                                            r"the zip directory declares 16; the file is corrupt"):
        load_npz(path)


def test_a_fortran_order_npz_member_reads_as_numpy_does(tmp_path):
    path = tmp_path / "f.npz"
    x = np.asfortranarray(np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5))
    np.savez(path, x_train=x, x_test=x, y_train=np.array([3, 1]))
    data = load_npz(path)
    with np.load(path) as reference:
        assert np.array_equal(data.x_train[:, 0], reference["x_train"])
        assert data.y_train.tolist() == [3, 1]


def test_the_limit_is_a_config_key_and_reaches_the_readers(tmp_path, tiny_npz):
    cfg = config_mod.resolve("dense16", overrides=[f"data.source={tiny_npz}", "data.max_bytes=1000"])
    assert cfg.data.max_bytes == 1000
    with pytest.raises(VaescopeError, match="more than data.max_bytes = 1000 bytes"):
        load_dataset(cfg.data.source, cfg.data.max_bytes)
    assert len(load_dataset(cfg.data.source).x_train) == 512  # the default admits it
    with pytest.raises(VaescopeError, match="invalid config: data.max_bytes is 0"):
        config_mod.resolve("dense16", overrides=["data.max_bytes=0"])


def test_a_pickle_beyond_the_limit_is_refused(tmp_path):
    import gzip
    import pickle

    from vaescope.data.mnist import read_mnist_pickle

    arrays = tuple((np.zeros((n, 784), np.float32), np.zeros(n, np.int64)) for n in (3, 1, 2))
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(arrays, protocol=4)))
    size = len(pickle.dumps(arrays, protocol=4))
    assert len(read_mnist_pickle(path, check_hash=False, max_bytes=size).x_train) == 4  # exactly at the limit
    with pytest.raises(VaescopeError, match=f"holds more than data.max_bytes = .* of pickle; .* "
                                            f"--set data.max_bytes={2 * (size - 1)}"):
        read_mnist_pickle(path, check_hash=False, max_bytes=size - 1)


# ---------------------------------------------------------------------------- JSON and TOML

def test_an_endless_config_file_is_refused(tmp_path):
    with pytest.raises(VaescopeError, match=r"config file /dev/zero is larger than 1.0 MiB; a vaescope config is "
                                            "a few hundred bytes"):
        config_mod.load_toml("/dev/zero")


def test_an_oversized_json_run_file_is_refused(tmp_path):
    path = tmp_path / "config.json"
    with open(path, "wb") as handle:  # sparse: no disk is spent
        handle.truncate(TEXT_MAX_BYTES + 1)
    with pytest.raises(VaescopeError, match=r"run config .*config.json is larger than 64.0 MiB"):
        read_json(path, "run config")
    path.write_text('{"a": 1}')
    assert read_json(path, "run config", max_bytes=8) == {"a": 1}
    with pytest.raises(VaescopeError, match="larger than 7 bytes"):
        read_json(path, "run config", max_bytes=7)


def test_json_nested_past_the_recursion_limit_is_one_line(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(VaescopeError, match="is not valid JSON"):
        read_json(path)
