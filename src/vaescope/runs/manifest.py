"""The manifest of a finished run: the SHA-256 of each final file, and the check of it.

When a run directory is complete (the end of ``train``, of ``prune``, ...), ``manifest.json`` is
written last, atomically::

    {"format": 1, "files": {"model.safetensors": {"sha256": "9f2c...", "bytes": 1765536}, ...}}

Whatever reads a finished run (``load_run``, hence ``stats``, ``inspect``, ``prune``; ``train
--resume``; ``vaescope verify``) checks the files it lists and refuses one that changed or went
missing, with one line naming it and how to get it back. A directory without a manifest is an
unfinished run, or one written before vaescope recorded manifests; it is read as it is, and
``vaescope verify`` says so. Checkpoints are not listed: ``checkpoints/latest.json`` records the
SHA-256 of the checkpoint it points to.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from vaescope.core.errors import VaescopeError
from vaescope.core.storage import atomic_write_json, read_json

MANIFEST_FILE = "manifest.json"
# The final files of a run directory, as vaescope.runs.files and vaescope.runs.checkpoint name them
# (tests/test_manifest.py checks that the names agree).
FINAL_FILES = ("config.json", "model.safetensors", "metrics.csv", "trace.csv", "timing.csv")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, read in chunks (memory stays flat for any size)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(run_dir: str | os.PathLike[str], names: Iterable[str] = FINAL_FILES) -> Path:
    """Record the SHA-256 and size of each of ``names`` present in ``run_dir`` in ``manifest.json``.

    Call it once the run directory is finished, as its last write; ``names`` are paths relative
    to ``run_dir`` (default: the final files of a training run). Returns the manifest's path.
    """
    run_dir = Path(run_dir)
    files = {}
    for name in names:
        _check_name(name, run_dir / MANIFEST_FILE)
        path = run_dir / name
        if path.is_file():
            files[name] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    target = run_dir / MANIFEST_FILE
    atomic_write_json(target, {"format": 1, "files": files})
    return target


@dataclass
class Verification:
    """The outcome of checking a run against its manifest: the files that match, and one line
    for each that does not (naming it and how to get it back). ``has_manifest`` is False when
    the directory holds none (nothing could be checked)."""

    run_dir: Path
    has_manifest: bool
    matching: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # names of the files that differ or are missing

    @property
    def intact(self) -> bool:
        return self.has_manifest and not self.problems


def verify_run(run_dir: str | os.PathLike[str]) -> Verification:
    """Check every file ``manifest.json`` lists against its recorded size and SHA-256. A
    manifest that is itself damaged raises one :class:`VaescopeError` line."""
    run_dir = Path(run_dir)
    where = run_dir / MANIFEST_FILE
    if not where.is_file():
        return Verification(run_dir, has_manifest=False)
    recorded = _read_manifest(where)
    result = Verification(run_dir, has_manifest=True)
    fix = recovery_hint(run_dir)
    for name, entry in recorded.items():
        path = run_dir / name
        if not path.is_file():
            result.problems.append(f"{path} is missing (manifest.json lists it); {fix}")
        elif path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
            result.problems.append(f"{path} changed since the run finished (its SHA-256 is not the one "
                                   f"in manifest.json); {fix}")
        else:
            result.matching.append(name)
            continue
        result.changed.append(name)
    return result


def require_intact(run_dir: str | os.PathLike[str]) -> Verification:
    """:func:`verify_run`, raising the first problem as one line (a run without a manifest passes)."""
    result = verify_run(run_dir)
    if result.problems:
        more = len(result.problems) - 1
        suffix = f" (and {more} more file{'s' if more > 1 else ''}: vaescope verify {result.run_dir})" if more else ""
        raise VaescopeError(result.problems[0] + suffix)
    return result


def recovery_hint(run_dir: Path) -> str:
    """How to get a run's final files back: from its last checkpoint when one is left."""
    if (run_dir / "checkpoints" / "latest.json").is_file():
        return (f"rebuild it from the last good checkpoint with 'vaescope train --out {run_dir} --resume', "
                "or retrain the run")
    return "retrain the run (no checkpoint is left to rebuild it from)"


def _read_manifest(where: Path) -> dict[str, dict]:
    fix = (f"delete it, then 'vaescope train --out {where.parent} --resume' rebuilds the final files and "
           "their manifest from the last checkpoint")
    try:
        data = read_json(where, "manifest")
    except VaescopeError as err:  # its own fix ("restore or delete it") made precise
        raise VaescopeError(f"{str(err).rsplit('; ', 1)[0]}; {fix}") from err
    files = data.get("files") if isinstance(data, dict) and data.get("format") == 1 else None
    if not isinstance(files, dict):
        raise VaescopeError(f"{where} is not a vaescope manifest (format 1 with files); {fix}")
    for name, entry in files.items():
        _check_name(name, where)
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and _SHA256.fullmatch(entry["sha256"]) and type(entry.get("bytes")) is int):
            raise VaescopeError(f"{where} has a malformed entry for {name}; {fix}")
    return files


def _check_name(name: str, where: Path) -> None:
    """A manifest names files inside its run directory: relative, no ``..``, no backslash."""
    parts = PurePosixPath(name).parts if isinstance(name, str) else ()
    if not parts or name.startswith("/") or "\\" in name or any(p in ("..", ".") for p in parts) \
            or name == MANIFEST_FILE:
        raise VaescopeError(f"{where} names {name!r}, not a file of its run directory; refusing it")
