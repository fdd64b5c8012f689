"""Faults a week of runs must survive: a killed process, a full disk, an unwritable place, a second
writer, a NaN. Each test injects the fault, checks the one line the user sees, and checks what
is kept. The table in docs/reliability.md lists them."""

from __future__ import annotations

import contextlib
import csv
import errno
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_OVERRIDES, LogLines
from faultchild import tiny_reproduce_settings
from safetensors.torch import load_file

from vaescope.cli import main as cli
from vaescope.core import config as config_mod
from vaescope.core.errors import VaescopeError
from vaescope.core.storage import directory_lock
from vaescope.data.dataset import Dataset
from vaescope.measures import run as analysis
from vaescope.reproduce import reproduce
from vaescope.runs.checkpoint import load_checkpoint, load_run
from vaescope.runs.files import read_metrics, read_trace
from vaescope.runs.manifest import FINAL_FILES, verify_run
from vaescope.training import train as train_mod
from vaescope.training.train import train

CHILD = Path(__file__).with_name("faultchild.py")
COMPARED = ["model.safetensors", "metrics.csv", "trace.csv", "config.json"]  # timing.csv holds wall times
QUIET = {"progress": False}


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
        elif name == "manifest.json":
            assert verify_run(run).intact  # written last: every file it lists is as it was then
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
    "renamed:model.safetensors": "final weights written, their manifest not yet",
    "partial:manifest.json": "half of the manifest written",
}
FINISHED = ("renamed:model.safetensors", "partial:manifest.json")  # killed with the weights complete


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
    assert (run / "model.safetensors").exists() == (point in FINISHED)
    assert not (run / "manifest.json").exists()

    resume = ["train", "--out", str(run), "--resume", "--quiet"]
    if point == FRESH_PROCESS:
        done = subprocess.run([sys.executable, "-m", "vaescope.cli", *resume], capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stderr
    else:
        result = CliRunner().invoke(cli, resume)
        assert result.exit_code == 0, result.output  # ... and the lock it left is recognised as stale

    for name in COMPARED:
        assert (run / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs after {KILL_POINTS[point]}"
    assert_every_file_whole(run)
    assert sorted(verify_run(run).matching) == sorted(FINAL_FILES)  # the resumed run has its manifest
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
    monkeypatch.setattr(train_mod, "load_dataset", lambda source, max_bytes=None: tiny_dataset)
    monkeypatch.setattr(analysis, "load_dataset", lambda source, max_bytes=None: tiny_dataset)
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


# ---------------------------------------------------------------------------- two writers

@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_runs(tmp_path, tiny_npz):
    run, marker = tmp_path / "run", tmp_path / "marker"
    first = start_child("step:5", marker, train_args(tiny_npz, run))
    try:
        wait_for(marker, first)  # the first writer holds the lock, mid-epoch
        before = snapshot(run)
        for args in (["train", "--out", str(run), "--resume", "--quiet"], train_args(tiny_npz, run)):
            result = CliRunner().invoke(cli, args)
            error = one_error_line(result.output)
            assert result.exit_code == 2
            assert f"run directory {run} is in use by process {first.pid}; wait for it to finish" in error, error
        assert snapshot(run) == before  # the refused writer touched nothing
    finally:
        first.kill()
        first.wait()


def comparable(results: dict) -> dict:
    """``results.json`` without what may differ between an uninterrupted and a continued command:
    wall times, and whether a model was trained by this process or reused."""
    out = {k: v for k, v in results.items() if k != "timing"}
    out["models"] = {name: {k: v for k, v in block.items() if k not in ("train_seconds", "reused")}
                     for name, block in results["models"].items()}
    return out


@pytest.fixture(scope="module")
def uninterrupted_reproduction(tmp_path_factory, tiny_npz) -> dict:
    settings, steps = tiny_reproduce_settings(tiny_npz)
    out = tmp_path_factory.mktemp("reproduce-reference")
    reproduce(settings, out, steps=steps)
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_two_reproduce_into_one_folder(tmp_path, tiny_npz, uninterrupted_reproduction):
    """The first (a child, paused in conv16 seed 1's second epoch) holds the folder: a second
    ``vaescope reproduce`` is refused naming its PID; one with ``--wait`` says so once and waits;
    the first is then SIGKILLed, and the waiting one continues its work to the same results."""
    out, marker = tmp_path / "out", tmp_path / "marker"
    first = start_child("step:27", marker, ["tiny-reproduce", str(tiny_npz), str(out)])
    try:
        wait_for(marker, first)
        before = snapshot(out)
        result = CliRunner().invoke(cli, ["reproduce", "--quick", "--out", str(out)])
        assert result.exit_code == 2
        assert one_error_line(result.output) == (
            f"Error: output folder {out} is in use by process {first.pid}; wait for it to finish (--wait queues "
            "behind it) or choose another --out")
        assert snapshot(out) == before  # refused before touching anything (or loading MNIST)

        waiting = threading.Event()

        class Watch(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "waiting for it to finish" in record.getMessage():
                    waiting.set()

        def kill_the_first_once_the_second_waits() -> None:
            waiting.wait(timeout=120)  # on a timeout the kill still comes, and the assertions below fail
            first.send_signal(signal.SIGKILL)

        killer = threading.Thread(target=kill_the_first_once_the_second_waits)
        watch = Watch()
        logging.getLogger("vaescope").addHandler(watch)
        killer.start()
        settings, steps = tiny_reproduce_settings(tiny_npz)
        with LogLines() as lines:
            results = reproduce(settings, out, steps=steps, wait=True)
        killer.join()
        logging.getLogger("vaescope").removeHandler(watch)
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL
    assert [line for line in lines if "waiting" in line] == [
        f"output folder {out} is in use by process {first.pid}; waiting for it to finish"]
    assert f"reusing {out}/runs/dense16-seed1 (same config)" in lines  # finished before the kill
    assert f"reusing {out}/runs/conv16-seed0 (same config)" in lines
    assert f"resuming {out}/runs/conv16-seed1 from epoch 1 (step 8)" in lines  # killed in its epoch 2
    assert comparable(results) == comparable(uninterrupted_reproduction)
    assert comparable(json.loads((out / "results.json").read_text())) == comparable(uninterrupted_reproduction)
    assert not list(out.rglob(".*.tmp"))


def test_a_reused_run_whose_weights_changed_is_rebuilt(tmp_path, tiny_npz):
    settings, steps = tiny_reproduce_settings(tiny_npz)
    train_step = [s for s in steps if s.id == "train"]
    reproduce(settings, tmp_path, steps=train_step)
    weights = tmp_path / "runs" / "conv16-seed1" / "model.safetensors"
    good = weights.read_bytes()
    raw = bytearray(good)
    raw[-1] ^= 0x01
    weights.write_bytes(bytes(raw))
    with LogLines() as lines:
        results = reproduce(settings, tmp_path, steps=train_step)
    assert results["models"]["conv16"]["reused"] == [True, False]
    assert f"{weights} changed since the run finished (its SHA-256 is not the one in manifest.json); rewriting " \
           "it from the last checkpoint" in lines
    assert weights.read_bytes() == good


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)  # the protocol of storage.directory_lock: flock, then the PID
os.write(fd, str(os.getpid()).encode())
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(folder: Path, seconds: float) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder / ".lock"), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_waiting_lock_names_the_holder_once_and_gets_the_folder(tmp_path):
    folder = tmp_path / "sweep"
    holder = hold_lock(folder, 1.5)
    try:
        with pytest.raises(VaescopeError, match=f"sweep folder {folder} is in use by process {holder.pid}; wait"), \
                directory_lock(folder, "sweep folder"):
            pass
        started = time.monotonic()
        with LogLines() as lines, directory_lock(folder, "sweep folder", wait=True):
            assert holder.wait(timeout=10) == 0  # the holder ran to its end: the lock is ours only after it
            assert (folder / ".lock").read_text() == str(os.getpid())
        assert time.monotonic() - started > 0.5  # it waited (the holder sleeps 1.5 s)
        assert lines == [f"sweep folder {folder} is in use by process {holder.pid}; waiting for it to finish"]
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_a_second_sweep_is_refused_and_wait_reaches_it(tmp_path, monkeypatch, tiny_npz):
    folder = tmp_path / "sweep"
    holder = hold_lock(folder, 60)
    try:
        args = ["sweep", "--preset", "dense16", "--data", str(tiny_npz), "--grid", "model.latent_dim=2,4",
                "--out", str(folder), "--quiet"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2
        assert one_error_line(result.output) == (
            f"Error: sweep folder {folder} is in use by process {holder.pid}; wait for it to finish (--wait queues "
            "behind it) or choose another --out")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    sweep_mod = importlib.import_module("vaescope.sweeps.execute")

    seen = []
    monkeypatch.setattr(sweep_mod, "sweep", lambda *a, **k: seen.append(k["wait"]) or [])
    assert CliRunner().invoke(cli, [*args, "--wait"]).exit_code == 0 and seen == [True]


def test_a_lock_left_by_a_dead_process_is_stale(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / ".lock").write_text(str(gone.pid))
    with directory_lock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def test_a_pid_alone_does_not_hold_the_lock(tmp_path):
    """A lock file naming a live process that does not hold the lock (a reused PID, or a copied
    run directory) is not mistaken for a live writer: the kernel's flock decides, the PID is
    only for the message."""
    (tmp_path / ".lock").write_text(str(os.getppid()))  # alive, but not holding anything
    # ... and the lock does not trust its own PID either: a second lock in this process is refused.
    with directory_lock(tmp_path), pytest.raises(VaescopeError, match=f"in use by process {os.getpid()}"), \
            directory_lock(tmp_path):
        pass


def test_a_late_opener_does_not_lock_the_dead_inode(tmp_path, monkeypatch):
    """Open-then-flock races with unlink-on-release: a process that opened ``.lock`` just before
    the holder released it (unlinking the file) then flocks the dead inode, which nobody holds, while
    a third party locks the new file. Played in that exact order with events: the late opener must
    see that its inode is no longer the file's and be refused by the new holder."""
    import fcntl
    import threading

    from vaescope.core import storage

    opened, go = threading.Event(), threading.Event()
    late: dict[str, object] = {}

    class PausedFlock:
        LOCK_EX, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_NB

        @staticmethod
        def flock(fd: int, operation: int) -> None:
            if threading.current_thread().name == "late" and not opened.is_set():
                late["inode"] = os.fstat(fd).st_ino
                opened.set()  # it has opened the first holder's file ...
                assert go.wait(10)  # ... and flocks only once that file is gone and a new one is held
            fcntl.flock(fd, operation)

    monkeypatch.setattr(storage, "fcntl", PausedFlock)

    def late_opener() -> None:
        try:
            with directory_lock(tmp_path):
                late["held"] = True
        except VaescopeError as err:
            late["refused"] = str(err)

    thread = threading.Thread(target=late_opener, name="late")
    with directory_lock(tmp_path):
        first_inode = (tmp_path / ".lock").stat().st_ino
        thread.start()
        assert opened.wait(10)
    assert not (tmp_path / ".lock").exists()  # released: unlinked while held
    with directory_lock(tmp_path):
        assert late["inode"] == first_inode  # the late opener holds a descriptor of the dead file
        go.set()
        thread.join(10)
        assert "held" not in late
        assert late["refused"].endswith(f"in use by process {os.getpid()}; "
                                        "wait for it to finish or choose another --out")
    assert not (tmp_path / ".lock").exists()


# ---------------------------------------------------------------------------- numerical faults

@pytest.mark.parametrize("bad_step, epoch, kept", [(12, 2, "the last good checkpoint (epoch 1) is kept"),
                                                    (8, 1, "no checkpoint had been written yet")])
def test_an_infinite_gradient_of_a_finite_loss_stops_the_run(tmp_path, tiny_config, tiny_dataset, monkeypatch,
                                                            reference_run, bad_step, epoch, kept):
    """An inf in one gradient, loss finite: Adam would turn the weights into NaN (inf/inf) and the
    epoch's checkpoint would keep them. Step 8 is the last step of epoch 1, right before its
    checkpoint."""
    from vaescope.training import engine as engine_mod

    real_build = engine_mod.build_model
    steps = {"n": 0}

    def build_with_poisoned_gradient(*args, **kwargs):
        model = real_build(*args, **kwargs)

        def hook(grad):
            steps["n"] += 1
            return grad * float("inf") if steps["n"] == bad_step else grad

        next(model.parameters()).register_hook(hook)
        return model

    monkeypatch.setattr(engine_mod, "build_model", build_with_poisoned_gradient)
    run = tmp_path / "run"
    with pytest.raises(VaescopeError) as caught:
        train(tiny_config, run, dataset=tiny_dataset, **QUIET)
    assert str(caught.value).startswith(
        f"a gradient became NaN or infinite (the loss was finite) at epoch {epoch}, step {bad_step}; {kept}")
    assert not (run / "model.safetensors").exists() and not (run / ".lock").exists()
    if epoch == 1:
        assert not (run / "checkpoints").exists()
        return
    checkpoint = load_checkpoint(run)
    assert checkpoint.meta["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint.model_state.values())
    monkeypatch.undo()  # the cause fixed, the run continues from the kept checkpoint
    train(tiny_config, run, resume=True, dataset=tiny_dataset, **QUIET)
    for name in COMPARED:
        assert (run / name).read_bytes() == (reference_run / name).read_bytes(), name


def test_a_real_divergence_stops_at_its_step(tmp_path, tiny_config, tiny_dataset):
    """No patching: lr = 1 overflows exp(logvar) after one update."""
    config = config_mod.replace(tiny_config, **{"train.lr": 1.0})
    with pytest.raises(VaescopeError, match=r"^the loss became NaN or infinite at epoch 1, step 2; no checkpoint "
                                            r"had been written yet; lower train.lr"):
        train(config, tmp_path / "run", dataset=tiny_dataset, **QUIET)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_in_a_dataset_object_are_refused_before_training(tmp_path, tiny_config, bad):
    """The file readers refuse NaN (tests/test_data.py); arrays handed to train() get the same check."""
    x = np.full((16, 1, 8, 8), 0.5, dtype=np.float32)
    x[3, 0, 2, 2] = bad
    dataset = Dataset("arrays", x, None, np.full((4, 1, 8, 8), 0.5, dtype=np.float32), None)
    with pytest.raises(VaescopeError, match=r"dataset 'arrays': x_train contains NaN or infinite values; clean the data"):
        train(tiny_config, tmp_path / "run", dataset=dataset, **QUIET)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- real filesystems

@contextlib.contextmanager
def mounted(target: Path, *options: str):
    """``mount OPTIONS TARGET`` for the test's life; skipped where mounting is not allowed."""
    target.mkdir(parents=True, exist_ok=True)
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a filesystem")
    done = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def test_a_really_full_filesystem(tmp_path, tiny_config, tiny_dataset, monkeypatch, reference_run):
    """A 1 MiB tmpfs, filled right after the first checkpoint: the real ENOSPC, wherever it hits."""
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as disk:
        run, filler = disk / "run", disk / "filler"
        real_save = train_mod.save_checkpoint

        def save_then_fill(*args, **kwargs):
            path = real_save(*args, **kwargs)
            if not filler.exists():
                free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
                filler.write_bytes(b"\0" * max(0, free - 4096))
            return path

        monkeypatch.setattr(train_mod, "save_checkpoint", save_then_fill)
        with pytest.raises(VaescopeError, match=r"^cannot write .*: No space left on device; free some disk space"):
            train(tiny_config, run, dataset=tiny_dataset, **QUIET)
        assert load_checkpoint(run).meta["epoch"] == 1
        assert_every_file_whole(run)
        assert not list(run.rglob(".*")), "a temporary or the lock was left behind"
        filler.unlink()
        monkeypatch.undo()
        train(tiny_config, run, resume=True, dataset=tiny_dataset, **QUIET)
        for name in COMPARED:
            assert (run / name).read_bytes() == (reference_run / name).read_bytes(), name


def test_a_really_read_only_filesystem(tmp_path, reference_run, tiny_dataset, monkeypatch):
    monkeypatch.setattr(train_mod, "load_dataset", lambda source, max_bytes=None: tiny_dataset)
    monkeypatch.setattr(analysis, "load_dataset", lambda source, max_bytes=None: tiny_dataset)
    shelf = tmp_path / "shelf"
    shutil.copytree(reference_run, shelf / "run")
    before = snapshot(shelf)
    with mounted(shelf, "--bind", str(shelf)):
        remount = ["mount", "-o", "remount,ro,bind", str(shelf)]
        if subprocess.run(remount, capture_output=True, check=False).returncode != 0:
            pytest.skip("cannot remount read-only here")
        for args in (["train", "--out", str(shelf / "run"), "--resume", "--quiet"], ["stats", str(shelf / "run")],
                     ["train", "--preset", "dense16", "--out", str(shelf / "new"), "--quiet"]):
            result = CliRunner().invoke(cli, args)
            error = one_error_line(result.output)
            assert result.exit_code == 2 and "Read-only file system" in error and "make the directory writable" in error
    assert snapshot(shelf) == before


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", ["npz", "pickle"])
def test_non_finite_values_in_data_files_are_refused(tmp_path, kind, bad):
    import gzip
    import pickle

    from vaescope.data.mnist import read_mnist_pickle
    from vaescope.data.readers import load_npz

    x = np.full((4, 784), 0.5, dtype=np.float32)
    x[2, 100] = bad
    if kind == "npz":
        path = tmp_path / "data.npz"
        np.savez(path, x_train=x, x_test=np.full((2, 784), 0.5, dtype=np.float32))
        read = load_npz
    else:
        path = tmp_path / "mnist.pkl.gz"
        y = np.zeros(4, dtype=np.int64)
        path.write_bytes(gzip.compress(pickle.dumps(((x, y), (x, y), (x, y)), protocol=4)))
        read = lambda p: read_mnist_pickle(p, check_hash=False)
    with pytest.raises(VaescopeError, match=r"contains NaN or infinite values; clean the data"):
        read(path)
