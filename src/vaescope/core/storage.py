"""Atomic file writes, bounded reads and a lock for run directories.

A file is written to a temporary sibling, flushed to disk, then renamed over the target, so a
reader (or a resumed run) sees either the old complete file or the new complete file, never a
half-written one. ``os.replace`` is atomic on POSIX and on Windows within one filesystem.

A file is read by :func:`read_bytes` (or :func:`read_text`, :func:`read_json`): at most a stated
number of bytes plus one to notice a larger file, in chunks, so that memory follows what the file
really holds, and a missing, unreadable or oversized file is one line naming it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from vaescope.core.errors import VaescopeError

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


# JSON and TOML files vaescope reads are a few kB to a few MB; a larger one is not ours.
TEXT_MAX_BYTES = 64 * 2**20
READ_CHUNK = 2**24  # 16 MiB: the most a read asks for at once


def format_bytes(n: int) -> str:
    """``n`` bytes in the largest binary unit that keeps a number >= 1 (``4.0 GiB``)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def read_at_most(stream: BinaryIO, limit: int) -> bytearray:
    """Up to ``limit`` bytes of ``stream``, read in chunks: memory grows with what the stream
    really yields (a decompressor, a file that is shorter than promised), never with ``limit``."""
    out = bytearray()
    while len(out) < limit:
        piece = stream.read(min(READ_CHUNK, limit - len(out)))
        if not piece:
            break
        out += piece
    return out


def read_bytes(path: str | os.PathLike[str], what: str = "file", max_bytes: int = TEXT_MAX_BYTES,
               too_large: str = "it is not a file vaescope wrote; restore or delete it",
               missing: str = "check the path") -> bytes:
    """The bytes of the file ``path``, refused with one line when it is missing, unreadable or
    larger than ``max_bytes`` (at most ``max_bytes + 1`` bytes are ever read). ``too_large`` and
    ``missing`` are the fixes the messages give."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = read_at_most(handle, max_bytes + 1)
    except FileNotFoundError as err:
        raise VaescopeError(f"{what} {path} does not exist; {missing}") from err
    except IsADirectoryError as err:
        raise VaescopeError(f"{what} {path} is a directory, not a file; {missing}") from err
    except OSError as err:
        raise VaescopeError(f"cannot read {what} {path}: {err.strerror or err}; check the file") from err
    if len(raw) > max_bytes:
        raise VaescopeError(f"{what} {path} is larger than {format_bytes(max_bytes)}; {too_large}")
    return bytes(raw)


def read_text(path: str | os.PathLike[str], what: str = "file", max_bytes: int = TEXT_MAX_BYTES,
              **fixes: str) -> str:
    """:func:`read_bytes` decoded as UTF-8; undecodable text is one line too."""
    raw = read_bytes(path, what, max_bytes, **fixes)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise VaescopeError(f"{what} {path} is not UTF-8 text ({err.reason} at byte {err.start}); "
                            "restore or delete it") from err


def read_json(path: str | os.PathLike[str], what: str = "file", max_bytes: int = TEXT_MAX_BYTES) -> Any:
    """Read a JSON file of at most ``max_bytes``; a missing, oversized or corrupt file is one line."""
    text = read_text(path, what, max_bytes)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        detail = _one_line(err) if isinstance(err, json.JSONDecodeError) else "nested too deeply"
        raise VaescopeError(f"{what} {path} is not valid JSON ({detail}); restore or delete it") from err


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


_log = logging.getLogger(__name__)


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike[str], what: str = "run directory",
                   wait: bool = False, hint: str = "wait for it to finish or choose another --out") -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` for the life of the context.

    The lock is an ``flock`` on ``directory/.lock``, which also holds the owner's PID for the
    message. The kernel drops an ``flock`` when its process dies, however it dies, so a lock left
    by a killed run is stale by construction and a reused PID cannot fake an owner. Where
    ``flock`` is missing (Windows) the PID in the file decides, which a reused PID can fool.

    A held lock is refused with a line naming the holder's PID and ``hint``; with ``wait``, the
    holder's PID is logged once and the call blocks until the holder lets go (finishes or dies).
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VaescopeError(f"cannot create {what} {directory}: {err.strerror or err}; {_fix_hint(err)}") from err
    lock = directory / ".lock"
    acquire = _flock_acquire if fcntl is not None else _pid_acquire
    fd = acquire(lock, directory, f"{what} {directory}", wait, hint)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # unlinked while still held, so no one can lock the dead inode in between
        os.close(fd)


def _in_use(name: str, owner: int | None, hint: str) -> VaescopeError:
    return VaescopeError(f"{name} is in use by process {owner if owner is not None else '(unknown)'}; {hint}")


def _say_waiting(name: str, owner: int | None) -> None:
    _log.warning("%s is in use by process %s; waiting for it to finish",
                 name, owner if owner is not None else "(unknown)")


def _flock_acquire(lock: Path, directory: Path, name: str, wait: bool, hint: str) -> int:
    races = 0
    waiting = False
    while races < 10:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise VaescopeError(f"cannot lock {directory}: {err.strerror}; {_fix_hint(err)}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _lock_owner(lock)
            if not wait or owner == os.getpid():  # waiting for ourselves would never end
                os.close(fd)
                raise _in_use(name, owner, hint) from None
            if not waiting:  # the holder's PID once, however often the lock changes hands
                _say_waiting(name, owner)
                waiting = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until the holder lets go; Ctrl-C still works
            except BaseException:
                os.close(fd)
                raise
        except OSError as err:  # e.g. a filesystem without locks
            os.close(fd)
            raise VaescopeError(f"cannot lock {directory}: {err.strerror}; {_fix_hint(err)}") from err
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous owner unlinked it between our open and our flock: retry
            os.close(fd)
            races += 1
            continue
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as err:
            os.close(fd)
            raise VaescopeError(f"cannot lock {directory}: {err.strerror}; {_fix_hint(err)}") from err
        return fd
    raise VaescopeError(f"could not lock {name}: another process keeps taking it; try again")


def _pid_acquire(lock: Path, directory: Path, name: str, wait: bool, hint: str) -> int:  # pragma: no cover - no flock
    waiting = False
    stale = 0
    while stale < 2:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None and owner != os.getpid() and _pid_alive(owner):
                if not wait:
                    raise _in_use(name, owner, hint) from None
                if not waiting:
                    _say_waiting(name, owner)
                    waiting = True
                time.sleep(1.0)  # no kernel lock to block on: poll
                continue
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # stale: its process is dead
            stale += 1
            continue
        except OSError as err:
            raise VaescopeError(f"cannot lock {directory}: {err.strerror}; {_fix_hint(err)}") from err
        os.write(fd, str(os.getpid()).encode())
        return fd
    raise VaescopeError(f"could not lock {name}; try again")


def _lock_owner(lock: Path) -> int | None:
    try:
        with open(lock, "rb") as handle:
            return int(handle.read(32).strip())  # a PID; anything longer is not one
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
