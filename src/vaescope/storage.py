"""Atomic file writes and a lock for run directories.

A file is written to a temporary sibling, flushed to disk, then renamed over the target, so a
reader (or a resumed run) sees either the old complete file or the new complete file, never a
half-written one. ``os.replace`` is atomic on POSIX and on Windows within one filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import VaescopeError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fix_hint(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "free some disk space or choose another output directory"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the directory writable or choose another output directory"
    return "check the path and try again"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; on failure the previous file is left intact."""
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(path.parent)
    except OSError as err:
        raise VaescopeError(
            f"cannot write {path}: {err.strerror or err}; {_fix_hint(err)}"
        ) from err
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not supported everywhere (e.g. Windows), hence best effort.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """Read a JSON file, turning a missing or corrupt file into a one-line VaescopeError."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise VaescopeError(f"{what} {path} does not exist; check the path") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VaescopeError(f"{what} {path} is not valid JSON ({err}); restore or delete it") from err


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike[str], what: str = "run directory") -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` for the life of the context.

    The lock is an ``flock`` on ``directory/.lock``, which also holds the owner's PID for the
    message. The kernel drops an ``flock`` when its process dies, however it dies, so a lock left
    by a killed run is stale by construction and a reused PID cannot fake an owner. Where
    ``flock`` is missing (Windows) the PID in the file decides, which a reused PID can fool.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VaescopeError(f"cannot create {what} {directory}: {err.strerror or err}; {_fix_hint(err)}") from err
    lock = directory / ".lock"
    acquire = _flock_acquire if fcntl is not None else _pid_acquire
    fd = acquire(lock, directory, what)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # unlinked while still held, so no one can lock the dead inode in between
        os.close(fd)


def _flock_acquire(lock: Path, directory: Path, what: str) -> int:
    for _ in range(10):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise VaescopeError(f"cannot lock {directory}: {err.strerror}; {_fix_hint(err)}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _lock_owner(lock)
            os.close(fd)
            raise VaescopeError(
                f"{what} {directory} is in use by process {owner if owner is not None else '(unknown)'}; "
                "wait for it to finish or choose another --out"
            ) from None
        except OSError as err:  # e.g. a filesystem without locks
            os.close(fd)
            raise VaescopeError(f"cannot lock {directory}: {err.strerror}; {_fix_hint(err)}") from err
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous owner unlinked it between our open and our flock: retry
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as err:
            os.close(fd)
            raise VaescopeError(f"cannot lock {directory}: {err.strerror}; {_fix_hint(err)}") from err
        return fd
    raise VaescopeError(f"could not lock {what} {directory}: another process keeps taking it; try again")


def _pid_acquire(lock: Path, directory: Path, what: str) -> int:  # pragma: no cover - no flock
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None and owner != os.getpid() and _pid_alive(owner):
                raise VaescopeError(
                    f"{what} {directory} is in use by process {owner}; wait for it to finish "
                    "or choose another --out"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # stale: its process is dead
            continue
        except OSError as err:
            raise VaescopeError(f"cannot lock {directory}: {err.strerror}; {_fix_hint(err)}") from err
        os.write(fd, str(os.getpid()).encode())
        return fd
    raise VaescopeError(f"could not lock {what} {directory}; try again")


def _lock_owner(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:  # pragma: no cover - used without flock only
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# atomic_write_bytes names its temporaries ".<target>.<random>.tmp" (tempfile.mkstemp).
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries a killed writer left in ``directory``; call it only while holding
    the directory's lock (then no live writer owns them). Returns what was removed."""
    removed = []
    for path in Path(directory).glob(".*.tmp"):
        if _TEMPORARY.match(path.name) and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
