"""Bad input, fuzzed: random and mutated files for the IDX, npz and pickle readers and the config
loader, and bad command-line options.

Each property: the reader either returns data that is right (equal to what was written, or at
least consistent with the file's own header where the format has no checksum) or raises one
VaescopeError; never another exception, never a hang (each example has a deadline). The counts
of examples run are in docs/reliability.md (``pytest tests/test_fuzz.py
--hypothesis-show-statistics``).
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import tomllib
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from vaescope.cli import main as cli
from vaescope.core import config as config_mod
from vaescope.core.errors import VaescopeError
from vaescope.core.storage import read_bytes
from vaescope.data.mnist import read_mnist_pickle
from vaescope.data.readers import _IDX_DTYPES, load_npz, read_idx
from vaescope.training import train as train_mod

# Default example counts; a generous deadline so a loaded CI machine does not flake, but a hang fails.
FUZZ = settings(deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(autouse=True, scope="module")
def ieee_floats():
    """Training flushes subnormal floats to zero (train.configure_cpu), a process-wide CPU flag;
    Hypothesis needs IEEE floats to generate subnormal values, so clear it here."""
    import torch

    torch.set_flush_denormal(False)
    yield


def one_line(err: VaescopeError) -> str:
    text = str(err)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


# ---------------------------------------------------------------------------- mutations

def mutate(draw, data: bytes) -> bytes:
    """``data`` with bit flips, a truncation, an inserted or a deleted run of bytes; ``draw`` is
    ``st.data().draw`` (small draws, so a failure report stays readable)."""
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "flip+truncate"]))
    out = bytearray(data)
    if "flip" in kind and out:
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= 1 << draw(st.integers(0, 7))
    if "truncate" in kind and out:
        del out[draw(st.integers(0, len(out) - 1)):]
    if kind == "insert":
        i = draw(st.integers(0, len(out)))
        out[i:i] = draw(st.binary(min_size=1, max_size=16))
    if kind == "delete" and out:
        i = draw(st.integers(0, len(out) - 1))
        del out[i : i + draw(st.integers(1, 16))]
    return bytes(out)


# ---------------------------------------------------------------------------- IDX

@st.composite
def idx_files(draw) -> tuple[bytes, np.ndarray]:
    code = draw(st.sampled_from(sorted(_IDX_DTYPES)))
    dtype = np.dtype(_IDX_DTYPES[code])
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=1, max_size=3)))
    count = int(np.prod(shape))
    payload = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    array = np.frombuffer(payload, dtype=dtype).reshape(shape)
    raw = bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload
    return raw, array


def read_idx_bytes(scratch: Path, raw: bytes) -> np.ndarray:
    path = scratch / "file-idx"
    path.write_bytes(raw)
    return read_idx(path)


@FUZZ
@given(idx_files(), st.booleans())
def test_idx_round_trip(scratch, file, gz):
    raw, array = file
    loaded = read_idx_bytes(scratch, gzip.compress(raw) if gz else raw)
    assert loaded.shape == array.shape and np.array_equal(loaded, array, equal_nan=True)


@FUZZ
@given(idx_files(), st.booleans(), st.data())
def test_idx_truncated_never_loads(scratch, file, gz, data):
    raw = gzip.compress(file[0]) if gz else file[0]
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(VaescopeError) as caught:
        read_idx_bytes(scratch, raw[:cut])
    one_line(caught.value)


@FUZZ
@given(idx_files(), st.booleans(), st.data())
def test_idx_mutated_is_refused_or_consistent(scratch, file, gz, data):
    """IDX has no checksum: a flipped data byte gives a different array, which no reader can
    notice. What must hold: the array is exactly what the (mutated) header describes. Gzipped
    files have a CRC: there any accepted array is the original."""
    raw, array = file
    bad = mutate(data.draw, gzip.compress(raw) if gz else raw)
    try:
        loaded = read_idx_bytes(scratch, bad)
    except VaescopeError as err:
        one_line(err)
        event("refused")
        return
    event("accepted")
    plain = gzip.decompress(bad) if bad[:2] == b"\x1f\x8b" else bad
    shape = struct.unpack(f">{plain[3]}I", plain[4 : 4 + 4 * plain[3]])
    assert loaded.shape == shape
    assert 4 + 4 * len(shape) + loaded.nbytes == len(plain)
    if gz and bad[:2] == b"\x1f\x8b":
        assert np.array_equal(loaded, array, equal_nan=True) and loaded.dtype == array.dtype.newbyteorder("=")


@FUZZ
@given(st.binary(max_size=64))
@example(b"\x00\x00\x08\xff")  # 255 dimensions, header missing
@example(b"\x00\x00\x08\x04" + b"\xff" * 16)  # 4 dims of 2^32-1: a size no machine holds
@example(b"\x1f\x8b\x08\x00")  # a gzip header and nothing else
@example(b"\x00\x00\x08\x43" + b"\x00\x00\x00\x01" * 67 + b"\x07")  # 67 dimensions of size 1: beyond numpy
def test_idx_random_bytes(scratch, raw):
    try:
        loaded = read_idx_bytes(scratch, raw)
    except VaescopeError as err:
        one_line(err)
        event("refused")
        return
    event("accepted")
    assert loaded.ndim >= 1


# ---------------------------------------------------------------------------- npz

@st.composite
def npz_files(draw) -> tuple[bytes, dict[str, np.ndarray]]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    side = draw(st.integers(1, 4))
    as_float = draw(st.booleans())
    arrays = {}
    for key in ("x_train", "x_test"):
        n = draw(st.integers(1, 4))
        x = rng.random((n, side, side), dtype=np.float32) if as_float else rng.integers(0, 256, (n, side, side), dtype=np.uint8)
        arrays[key] = x
        if draw(st.booleans()):
            arrays["y" + key[1:]] = rng.integers(0, 10, n)
    buffer = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buffer, **arrays)
    return buffer.getvalue(), arrays


def load_npz_bytes(scratch: Path, raw: bytes):
    path = scratch / "data.npz"
    path.write_bytes(raw)
    return load_npz(path)


def same_as_written(dataset, arrays: dict[str, np.ndarray]) -> bool:
    pairs = [(dataset.x_train[:, 0], arrays["x_train"]), (dataset.x_test[:, 0], arrays["x_test"])]
    pairs += [(getattr(dataset, k), arrays[k]) for k in ("y_train", "y_test") if k in arrays]
    return all(np.array_equal(a, b) for a, b in pairs)


@FUZZ
@given(npz_files())
def test_npz_round_trip(scratch, file):
    raw, arrays = file
    assert same_as_written(load_npz_bytes(scratch, raw), arrays)


@FUZZ
@given(npz_files(), st.data())
def test_npz_mutated_is_refused_or_unchanged(scratch, file, data):
    """A zip stores a CRC-32 of every member, so an accepted file holds exactly the arrays written."""
    raw, arrays = file
    bad = mutate(data.draw, raw)
    try:
        loaded = load_npz_bytes(scratch, bad)
    except VaescopeError as err:
        one_line(err)
        event("refused")
        return
    event("accepted")
    assert same_as_written(loaded, arrays)


@FUZZ
@given(npz_files(), st.data())
def test_npz_truncated_never_loads(scratch, file, data):
    raw = file[0]
    with pytest.raises(VaescopeError) as caught:
        load_npz_bytes(scratch, raw[: data.draw(st.integers(0, len(raw) - 1))])
    one_line(caught.value)


# ---------------------------------------------------------------------------- the MNIST pickle

# (seed, train/valid/test sizes, protocol, gzipped): the pickle is built in the test, so that a
# failure report shows these few numbers, not 20 kB of bytes.
mnist_specs = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(0, 2), st.integers(1, 3),
                        st.integers(2, 5), st.booleans())


def mnist_pickle(spec) -> tuple[bytes, tuple]:
    seed, n_train, n_valid, n_test, protocol, gz = spec
    rng = np.random.default_rng(seed)
    parts = tuple((rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n))
                  for n in (n_train, n_valid, n_test))
    raw = pickle.dumps(parts, protocol=protocol)
    return (gzip.compress(raw) if gz else raw), parts


def read_pickle_bytes(scratch: Path, raw: bytes):
    path = scratch / "mnist.pkl.gz"
    path.write_bytes(raw)
    return read_mnist_pickle(path, check_hash=False)


def same_as_pickled(dataset, parts) -> bool:
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = parts
    to_bytes = lambda x: np.rint(x * 256).astype(np.uint8).reshape(len(x), 1, 28, 28)
    return (np.array_equal(dataset.x_train, to_bytes(np.concatenate([x_tr, x_va])))
            and np.array_equal(dataset.y_train, np.concatenate([y_tr, y_va]))
            and np.array_equal(dataset.x_test, to_bytes(x_te)) and np.array_equal(dataset.y_test, y_te))


@FUZZ
@given(mnist_specs)
def test_pickle_round_trip(scratch, spec):
    raw, parts = mnist_pickle(spec)
    assert same_as_pickled(read_pickle_bytes(scratch, raw), parts)


@FUZZ
@given(mnist_specs, st.data())
def test_pickle_mutated_is_refused_or_well_formed(scratch, spec, data):
    """A pickle has no checksum (the real file is checked by SHA-256 first); a mutated one either
    fails, or yields a well-formed dataset, and gzip's CRC makes a gzipped one the original."""
    raw, parts = mnist_pickle(spec)
    bad = mutate(data.draw, raw)
    try:
        loaded = read_pickle_bytes(scratch, bad)
    except VaescopeError as err:
        one_line(err)
        event("refused")
        return
    event("accepted")
    assert loaded.x_train.dtype == np.uint8 and loaded.x_train.shape[1:] == (1, 28, 28)
    assert loaded.y_train is not None and len(loaded.y_train) == len(loaded.x_train)
    if raw[:2] == b"\x1f\x8b" and bad[:2] == b"\x1f\x8b":
        assert same_as_pickled(loaded, parts)


plain_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)

arrays = st.builds(
    lambda shape, kind, seed: np.random.default_rng(seed).random(shape).astype(kind),
    st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple),
    st.sampled_from(["float32", "float64", "int64", "uint8", "bool", "complex64"]),
    st.integers(0, 1000),
)


@FUZZ
@given(st.one_of(
    plain_values,
    st.tuples(st.tuples(arrays, arrays), st.tuples(arrays, arrays), st.tuples(arrays, arrays)),
    st.lists(st.tuples(arrays, arrays), min_size=0, max_size=4).map(tuple),
), st.integers(0, 5))
def test_pickle_of_the_wrong_structure_is_refused(scratch, obj, protocol):
    """Well-formed pickles of anything but ((x, y), (x, y), (x, y)) float (N, 784) images."""
    try:
        loaded = read_pickle_bytes(scratch, pickle.dumps(obj, protocol=protocol))
    except VaescopeError as err:
        one_line(err)
        event("refused")
        return
    event("accepted")
    assert loaded.x_train.shape[1:] == (1, 28, 28)


@FUZZ
@given(st.binary(max_size=96))
@example(b"\x80\x05\x95" + b"\xff" * 8)  # a frame claiming 2^64 bytes
@example(b"\x80\x04\x8e" + b"\xff" * 8)  # BINBYTES8 of 2^64 bytes
@example(b"(\x00P0\n.")  # a persistent id
def test_pickle_random_bytes(scratch, raw):
    with pytest.raises(VaescopeError) as caught:
        read_pickle_bytes(scratch, raw)
    one_line(caught.value)


# ---------------------------------------------------------------------------- config

SECTIONS = {f.name: f.type for f in config_mod.dataclasses.fields(config_mod.Config)}
KEYS = ["data", "model", "loss", "train", "stats", "name", "source", "kind", "latent_dim", "hidden",
        "conv_channels", "conv_dense", "reconstruction", "beta", "sampling", "epochs", "batch_size", "lr",
        "seed", "checkpoint_every", "trace_every", "trace_points", "trace_subset", "threads", "device",
        "mu_variance_threshold", "sigma2_threshold", "kl_threshold"]
keys = st.sampled_from(KEYS) | st.text(max_size=6)
toml_values = st.recursive(
    st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=16,
)
trees = st.dictionaries(keys, toml_values, max_size=6)


def check_config(cfg: config_mod.Config) -> None:
    assert config_mod.from_dict(cfg.to_dict()) == cfg  # what is accepted round-trips


@FUZZ
@given(trees)
def test_config_from_random_trees(tree):
    try:
        cfg = config_mod.from_dict(tree, origin="fuzz")
    except VaescopeError as err:
        one_line(err)
        event("refused")
        return
    event("accepted")
    check_config(cfg)


@FUZZ
@given(st.text(max_size=200), st.sampled_from([None, *config_mod.preset_names()]), st.data())
@example("v = " + "[" * 5000 + "]" * 5000, None, None)  # nesting deeper than Python's recursion limit
@example("model = " + "{ a = " * 3000 + "1" + " }" * 3000, None, None)
def test_config_toml_random_and_mutated(scratch, text, preset, data):
    """Random text, or a shipped preset with bytes mutated."""
    if preset is not None:
        raw = (Path(config_mod.__file__).parent / "presets" / f"{preset}.toml").read_bytes()
        text = mutate(data.draw, raw).decode("utf-8", "replace")
    path = scratch / "config.toml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = config_mod.from_dict(config_mod.load_toml(path), origin=str(path))
    except VaescopeError as err:
        one_line(err)
        event("refused")
        return
    event("accepted")
    check_config(cfg)


@FUZZ
@given(st.binary(max_size=100))
def test_config_toml_random_bytes(scratch, raw):
    path = scratch / "config.toml"
    path.write_bytes(raw)
    try:
        tree = config_mod.load_toml(path)
    except VaescopeError as err:
        one_line(err)
        event("refused")
        return
    event("accepted")
    assert tree == tomllib.loads(raw.decode("utf-8"))  # what the standard parser reads, nothing added or dropped


@FUZZ
@given(st.lists(st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from([f"{s}.{k}" for s in SECTIONS for k in KEYS]) | keys,
              st.text(max_size=12) | st.integers().map(str) | st.floats().map(str)),
), max_size=4))
@example(["train.epochs.x=1"])
@example(["train=3", "train.epochs=2"])
@example(["model.hidden=" + "[" * 3000])
def test_config_overrides(texts):
    try:
        cfg = config_mod.resolve("dense16", overrides=texts)
    except VaescopeError as err:
        one_line(err)
        event("refused")
        return
    event("accepted")
    check_config(cfg)


# ---------------------------------------------------------------------------- the bounds

LIMIT_MESSAGE = "more than data.max_bytes"


@FUZZ
@given(st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 8), min_size=1, max_size=4),
       st.sampled_from(sorted(_IDX_DTYPES)), st.integers(1, 2**36), st.booleans(), st.integers(0, 16))
@example([2**32 - 1] * 4, 0x0E, 2**36, True, 0)  # ~2.7e39 bytes promised by a 20-byte file
@example([3, 3], 0x08, 9, True, 0)  # exactly at the limit: accepted
@example([3, 3], 0x08, 8, False, 0)  # one byte over it: refused before reading
@example([0, 2**32 - 1, 2**32 - 1, 2**32 - 1], 0x08, 1, False, 0)  # no bytes, but beyond numpy's index
def test_idx_header_promise_is_checked_against_the_limit(scratch, shape, code, limit, gz, short):
    """Known answer: the promise (the product of the sizes times the item size) above ``limit`` is
    refused naming data.max_bytes; at or below it, a file holding exactly the promise loads with
    the promised shape, and one ``short`` of it is refused as truncated."""
    dtype = np.dtype(_IDX_DTYPES[code])
    promised = math.prod(shape) * dtype.itemsize
    payload_size = promised if promised <= 4096 else 0
    payload_size = max(0, payload_size - short)
    raw = bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + bytes(payload_size)
    path = scratch / "bounded-idx"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    try:
        loaded = read_idx(path, max_bytes=limit)
    except VaescopeError as err:
        message = one_line(err)
        if promised > limit:
            event("refused: over the limit")
            assert LIMIT_MESSAGE in message, message
        elif promised == 0 and "numpy cannot hold" in message:
            event("refused: a shape of no bytes but too many elements")
            assert 0 in shape and math.prod(d for d in shape if d) >= 2**63 // 8
        else:
            event("refused: data missing")
            assert payload_size < promised and f"holds {payload_size} data bytes but its header promises {promised}" \
                in message, message
        return
    event("accepted")
    assert promised <= limit and payload_size == promised and loaded.shape == tuple(shape)


@FUZZ
@given(idx_files(), st.binary(min_size=1, max_size=64))
def test_gzipped_idx_with_more_data_than_promised_is_refused(scratch, file, extra):
    raw, array = file
    expected = array.size * array.dtype.itemsize
    with pytest.raises(VaescopeError, match=f"holds more data than the {expected} bytes its header promises"):
        read_idx_bytes(scratch, gzip.compress(raw + extra))


def declared_sizes(raw: bytes) -> int:
    """What the zip directory of an npz declares for the arrays vaescope reads (zipfile's view)."""
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        return sum(i.file_size for i in archive.infolist() if i.filename[:-4] in ("x_train", "y_train", "x_test", "y_test"))


@FUZZ
@given(npz_files(), st.data())
def test_npz_declared_sizes_are_checked_against_the_limit(scratch, file, data):
    """Known answer: accepted (the very arrays) iff the declared sizes add up to at most the limit."""
    raw, arrays = file
    total = declared_sizes(raw)
    limit = data.draw(st.integers(max(1, total - 64), total + 64))
    path = scratch / "bounded.npz"
    path.write_bytes(raw)
    try:
        loaded = load_npz(path, max_bytes=limit)
    except VaescopeError as err:
        event("refused")
        assert total > limit and LIMIT_MESSAGE in one_line(err)
        return
    event("accepted")
    assert total <= limit and same_as_written(loaded, arrays)


@FUZZ
@given(npz_files(), st.data())
def test_npz_with_a_forged_directory_entry_is_refused_or_unchanged(scratch, file, data):
    """One field of one central directory entry replaced (compressed or declared size, the offset
    of the local header, the CRC-32): the bomb's tools. Refused in one line, or the arrays written."""
    raw, arrays = file
    entries = [i for i in range(len(raw) - 46) if raw[i : i + 4] == b"PK\x01\x02"]
    start = data.draw(st.sampled_from(entries))
    field = data.draw(st.sampled_from([("crc", 16), ("compressed", 20), ("declared", 24), ("offset", 42)]))
    value = data.draw(st.integers(0, 2**32 - 2) | st.sampled_from([0, 1, 2**31, 2**32 - 2]))
    forged = bytearray(raw)
    forged[start + field[1] : start + field[1] + 4] = struct.pack("<I", value)
    event(f"forged {field[0]}")
    try:
        loaded = load_npz_bytes(scratch, bytes(forged))
    except VaescopeError as err:
        one_line(err)
        event("refused")
        return
    event("accepted")
    assert same_as_written(loaded, arrays)


@FUZZ
@given(mnist_specs, st.integers(-8, 8))
def test_pickle_size_is_checked_against_the_limit(scratch, spec, offset):
    """Known answer: a pickle of N bytes (once inflated) loads with data.max_bytes >= N and is
    refused naming the limit below it."""
    raw, parts = mnist_pickle(spec)
    size = len(gzip.decompress(raw)) if raw[:2] == b"\x1f\x8b" else len(raw)
    limit = max(1, size + offset)
    path = scratch / "bounded.pkl.gz"
    path.write_bytes(raw)
    try:
        loaded = read_mnist_pickle(path, check_hash=False, max_bytes=limit)
    except VaescopeError as err:
        event("refused")
        assert size > limit and LIMIT_MESSAGE in one_line(err)
        return
    event("accepted")
    assert size <= limit and same_as_pickled(loaded, parts)


@FUZZ
@given(st.binary(max_size=96), st.integers(0, 100))
def test_json_and_toml_files_are_read_up_to_their_limit(scratch, raw, limit):
    """Known answer: a file of N bytes is read iff N <= the limit; above it, one line names it."""
    path = scratch / "bounded.json"
    path.write_bytes(raw)
    try:
        assert read_bytes(path, "run file", max_bytes=limit) == raw
    except VaescopeError as err:
        event("refused")
        assert len(raw) > limit and f"run file {path} is larger than {limit} bytes" in one_line(err)
        return
    event("accepted")
    assert len(raw) <= limit


# ---------------------------------------------------------------------------- the command line

BAD_OPTIONS = [
    (["--set", "model.latent_dims=4"], "unknown key 'model.latent_dims'; valid keys here are"),
    (["--set", "train.epochs=ten"], "train.epochs must be an integer, got 'ten'"),
    (["--set", "loss.beta=yes"], "loss.beta must be a number, got 'yes'"),
    (["--set", "model.hidden=[32, -4]"], "model.hidden is [32, -4]; every width must be at least 1"),
    (["--set", "train.batch_size=-64"], "train.batch_size is -64; it must be at least 1"),
    (["--set", "model.latent_dim=0"], "model.latent_dim is 0; it must be at least 1"),
    (["--set", "train.lr=0"], "train.lr is 0.0; it must be a positive number"),
    (["--set", "epochs=3"], "unknown key 'epochs'"),
    (["--set", "train.epochs"], "--set 'train.epochs' is not of the form section.key=value"),
    (["--epochs", "0"], "Invalid value for '--epochs': 0 is not in the range x>=1"),
    (["--epochs", "many"], "'--epochs'"),
    (["--seed", "-1"], "Invalid value for '--seed': -1 is not in the range x>=0"),
    (["--preset", "dense99"], "unknown preset 'dense99'; choose one of"),
    (["--config", "missing.toml"], "missing.toml"),
    (["--set", "name=../../elsewhere"], "name"),
]


@pytest.mark.parametrize("args, message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_train_options_get_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(train_mod, "train", lambda *a, **k: pytest.fail("training started"))
    base = ["train", "--out", str(tmp_path / "run")] + ([] if "--preset" in args else ["--preset", "dense16"])
    result = CliRunner().invoke(cli, base + args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output


@pytest.mark.parametrize("args, message", [
    (["stats", "no/such/run"], "run directory no/such/run does not exist; train one with"),
    (["stats", "RUN", "--split", "validation"], "'--split'"),
    (["train", "--resume"], "--resume needs --out"),
    (["train", "--resume", "--out", "no/such/run"], "--resume: no/such/run holds no run to continue"),
])
def test_bad_stats_and_resume_options_get_one_line(tmp_path, monkeypatch, args, message):
    (tmp_path / "RUN").mkdir()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output


def test_bad_thresholds_get_one_line(tmp_path, tiny_config, tiny_dataset):
    train_mod.train(tiny_config, tmp_path / "run", dataset=tiny_dataset, progress=False)
    result = CliRunner().invoke(cli, ["stats", str(tmp_path / "run"), "--mu-variance-threshold", "-1"])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: invalid config: stats.mu_variance_threshold must be positive"
