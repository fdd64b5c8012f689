"""Faults a week of runs must survive: a killed process, a full disk, an unwritable place, a second
writer, a NaN. Each test injects the fault, checks the one line the user sees, and checks what
is kept. The table in docs/reliability.md lists them."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from conftest import TINY_OVERRIDES
from vaescope import analysis
from vaescope import config as config_mod
from vaescope import train as train_mod
from vaescope.checkpoint import load_checkpoint, load_run
from vaescope.cli import main as cli
from vaescope.data import Dataset
from vaescope.errors import VaescopeError
from vaescope.storage import atomic_write_text, directory_lock
from vaescope.train import read_metrics, read_trace, train

CHILD = Path(__file__).with_name("faultchild.py")
COMPARED = ["model.safetensors", "metrics.csv", "trace.csv", "config.json"]  # timing.csv holds wall times
QUIET = {"progress": False, "log": lambda _: None}


def train_args(npz: Path, out: Path) -> list[str]:
    sets = [a for o in TINY_OVERRIDES for a in ("--set", o)]
    return ["train", "--preset", "dense16", "--data", str(npz), *sets, "--out", str(out), "--quiet"]


def start_child(point: str, marker: Path, args: list[str]) -> subprocess.Popen:
    """``vaescope ARGS`` in a new process that stops at ``point``; its output goes to MARKER.log."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(CHILD.parent), os.environ.get("PYTHONPATH", "")]))
    with open(f"{marker}.log", "w") as log:
        return subprocess.Popen([sys.executable, str(CHILD), point, str(marker), *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def wait_for(marker: Path, child: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if child.poll() is not None:
            raise AssertionError(f"the child ended before its fault point:\n{Path(f'{marker}.log').read_text()}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError("the child never reached its fault point")
        time.sleep(0.02)


def assert_every_file_whole(run: Path) -> None:
    """Every file a reader would open parses; only dot-named temporaries may be partial."""
    visible = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file() and not p.name.startswith(".")}
    for name in visible:
        path = run / name
        if name == "config.json":
            config_mod.from_dict(json.loads(path.read_text()))
        elif name == "metrics.csv":
            rows = read_metrics(run)
            assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
        elif name == "trace.csv":
            trace = read_trace(run)
            assert trace.steps == sorted(trace.steps)
        elif name == "timing.csv":
            with path.open(newline="") as handle:
                assert all(len(row) == 2 for row in csv.reader(handle))
        elif name == "checkpoints/latest.json":
            load_checkpoint(run)  # the pointed-to checkpoint exists and its SHA-256 matches
        elif name.endswith(".safetensors"):
            load_file(path)
            if name == "model.safetensors":
                load_run(run)
        else:
            raise AssertionError(f"unexpected file {name}")


# ---------------------------------------------------------------------------- killed training

# (fault point, what it stands for). 512 images, batch 64: 8 steps per epoch, 3 epochs.
KILL_POINTS = {
    "step:3": "during epoch 1, before any checkpoint",
    "step:13": "during epoch 2",
    "partial:epoch-0002.safetensors": "half of the epoch-2 checkpoint written",
    "renamed:epoch-0002.safetensors": "epoch-2 checkpoint complete, latest.json still names epoch 1",
    "partial:latest.json@2": "half of the new latest.json written",
    "renamed:metrics.csv@3": "epoch-3 metrics written, its checkpoint not yet",
    "partial:model.safetensors": "half of the final weights written",
}


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory, tiny_npz):
    """One run per kill point, started at once (start-up, mostly importing torch, dominates),
    each SIGKILLed at its point; and the uninterrupted reference run, trained in this process."""
    root = tmp_path_factory.mktemp("killed")
    children = {point: (root / f"run{i}", root / f"marker{i}") for i, point in enumerate(KILL_POINTS)}
    procs = {point: start_child(point, marker, train_args(tiny_npz, out)) for point, (out, marker) in children.items()}
    try:
        result = CliRunner().invoke(cli, train_args(tiny_npz, root / "reference"))
        assert result.exit_code == 0, result.output
        for point, proc in procs.items():
            wait_for(children[point][1], proc)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return root / "reference", {point: out for point, (out, _) in children.items()}


FRESH_PROCESS = "partial:model.safetensors"  # this one resumes through `python -m vaescope.cli`


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_training_resumes_to_identical_files(killed_runs, point):
    reference, runs = killed_runs
    run = runs[point]
    assert (run / ".lock").exists()  # the killed process could not clean up ...
    assert_every_file_whole(run)  # ... but nothing a reader opens is half-written
    assert not (run / "model.safetensors").exists()

    resume = ["train", "--out", str(run), "--resume", "--quiet"]
    if point == FRESH_PROCESS:
        done = subprocess.run([sys.executable, "-m", "vaescope.cli", *resume], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
    else:
        result = CliRunner().invoke(cli, resume)
        assert result.exit_code == 0, result.output  # ... and the lock it left is recognised as stale

    for name in COMPARED:
        assert (run / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs after {KILL_POINTS[point]}"
    assert_every_file_whole(run)
    leftovers = [p.name for p in run.rglob(".*")]
    assert leftovers == [], f"left behind after resume: {leftovers}"


# ---------------------------------------------------------------------------- full disk, read-only

def enospc_after(monkeypatch, matches: str, budget: int = 0) -> None:
    """Make writes of temporaries whose name contains ``matches`` fail with ENOSPC once
    ``budget`` bytes are written: the way a full disk shows itself (at write or at fsync)."""
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, handle):
            self._handle, self._room = handle, budget

        def write(self, data):
            if len(data) > self._room:
                self._handle.write(data[: self._room])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._room -= len(data)
            return self._handle.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._handle.__exit__(*exc)

        def __getattr__(self, attr):
            return getattr(self._handle, attr)

    def fdopen(fd, *a, **k):
        handle = real_fdopen(fd, *a, **k)
        return FullDisk(handle) if matches in os.readlink(f"/proc/self/fd/{fd}") else handle

    monkeypatch.setattr(os, "fdopen", fdopen)


def read_only(monkeypatch, root: Path) -> None:
    """Make ``root`` behave as a read-only place (EROFS), as root ignores permission bits."""
    real_open, real_mkdir = os.open, os.mkdir
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def inside(path) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(root)

    def fail(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def guarded_open(path, flags, *a, **k):
        if flags & writing and inside(path):
            fail(path)
        return real_open(path, flags, *a, **k)

    def guarded_mkdir(path, *a, **k):
        if inside(path):
            fail(path)
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


@pytest.fixture()
def reference_run(tmp_path, tiny_config, tiny_dataset) -> Path:
    return train(tiny_config, tmp_path / "reference", dataset=tiny_dataset, **QUIET).run_dir


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_npz, tiny_config, tiny_dataset,
                                                              monkeypatch, reference_run):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        enospc_after(patch, ".epoch-0002.safetensors.", budget=1000)
        result = CliRunner().invoke(cli, train_args(tiny_npz, run))
    error = one_error_line(result.output)
    assert result.exit_code == 2
    assert "epoch-0002.safetensors" in error and "No space left on device" in error and "free some disk space" in error
    assert load_checkpoint(run).meta["epoch"] == 1  # the previous checkpoint, its SHA-256 verified
    assert not list(run.rglob(".*")), "a temporary or the lock was left behind"
    assert_every_file_whole(run)
    # Space freed: the run continues and ends as if nothing had happened.
    train(tiny_config, run, resume=True, dataset=tiny_dataset, **QUIET)
    for name in COMPARED:
        assert (run / name).read_bytes() == (reference_run / name).read_bytes(), name


@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_full_disk_while_writing_a_report_keeps_the_previous_one(tmp_path, reference_run, tiny_dataset, monkeypatch,
                                                                failing):
    analysis.run_statistics(reference_run, dataset=tiny_dataset)
    before = snapshot(reference_run)
    if failing == "write":
        enospc_after(monkeypatch, ".stats-test.json.", budget=10)
    else:  # the data sat in the page cache; the disk refuses it when it is flushed
        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(VaescopeError, match=r"cannot write .*stats-test.json: No space left on device; free some"):
        analysis.run_statistics(reference_run, dataset=tiny_dataset)
    assert snapshot(reference_run) == before


def test_read_only_places_give_one_clear_line(tmp_path, reference_run, tiny_dataset, monkeypatch):
    monkeypatch.setattr(train_mod, "load_dataset", lambda source: tiny_dataset)
    monkeypatch.setattr(analysis, "load_dataset", lambda source: tiny_dataset)
    shelf = tmp_path / "shelf"
    shutil.copytree(reference_run, shelf / "run")
    before = snapshot(shelf)
    read_only(monkeypatch, shelf)
    runner = CliRunner()
    cases = {
        "new run": ["train", "--preset", "dense16", "--out", str(shelf / "new"), "--quiet"],
        "resume": ["train", "--out", str(shelf / "run"), "--resume", "--quiet"],
        "report": ["stats", str(shelf / "run")],
    }
    for what, args in cases.items():
        result = runner.invoke(cli, args)
        error = one_error_line(result.output)
        assert result.exit_code == 2, what
        assert "Read-only file system" in error and "make the directory writable or choose another" in error, error
    monkeypatch.undo()
    assert snapshot(shelf) == before
