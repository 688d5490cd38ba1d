"""Who owns the embedded archive: an exclusive flock on a file beside the chDB
data directory (``<dir>.owner``), held by one process at a time.

Embedded chDB lets one process open a data directory. tierflow makes that
explicit: a process opens the directory only while it holds this lock, and the
archive writer of a worker consumes only while its process holds it, so with N
workers exactly one archives and the others stand by. The kernel drops the lock
when its holder dies (even by kill -9), and a standby worker takes it over.

The lock lives beside the directory, not in it, so ownership survives the
directory being removed or replaced (the owner then holds its batches until the
directory is back, see backend.py).

The file's content tells readers (`tierflow sql`, `tierflow aipl`, the dashboard of
another process) where the owner answers read-only SQL: its loopback URL and a
random token made for this ownership. The file is readable by its owner only
(mode 0600): whoever can read it could open the data directory anyway.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import msgspec

LOCK_SUFFIX = ".owner"
_FILE_MODE = 0o600


@dataclass(frozen=True)
class Endpoint:
    """Where the owning process answers read-only SQL on the archive."""

    url: str  # the base URL, e.g. http://127.0.0.1:6066
    token: str


class OwnerRecord(msgspec.Struct, frozen=True):
    """The lock file's content."""

    pid: int
    url: str | None = None
    token: str | None = None

    def endpoint(self) -> Endpoint | None:
        return Endpoint(self.url, self.token) if self.url and self.token else None


def lock_path(chdb_dir: Path) -> Path:
    return chdb_dir.with_name(chdb_dir.name + LOCK_SUFFIX)


def read_owner(chdb_dir: Path) -> OwnerRecord | None:
    """What the current holder wrote (None: nobody wrote yet, or a write is under way)."""
    try:
        return msgspec.json.decode(lock_path(chdb_dir).read_bytes(), type=OwnerRecord)
    except (FileNotFoundError, PermissionError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def loopback_url(host: str, port: int) -> str:
    """The base URL at which a local process reaches a server bound to `host`."""
    if host in ("0.0.0.0", "::", ""):  # bound everywhere: reach it on loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class _Held:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0


class Ownership:
    """This process's hold on the owner locks, shared by every user in the process
    (the archive writer, the dashboard, the chDB backend), counted: the lock is
    released when the last user gives it back. flock belongs to an open file, so a
    second open of the same file in this process would contend with the first."""

    def __init__(self) -> None:
        self._held: dict[Path, _Held] = {}
        self._endpoints: dict[Path, Endpoint] = {}
        self._lock = threading.Lock()

    def take(self, chdb_dir: Path) -> bool:
        """Hold the lock (once more, when this process holds it already). False while
        another process holds it."""
        path = lock_path(chdb_dir)
        with self._lock:
            held = self._held.get(path)
            if held is None:
                fd = _try_lock(path)
                if fd is None:
                    return False
                held = self._held[path] = _Held(fd)
                _write(fd, OwnerRecord(os.getpid(), *_fields(self._endpoints.get(path))))
            held.users += 1
            return True

    def give_back(self, chdb_dir: Path) -> None:
        path = lock_path(chdb_dir)
        with self._lock:
            held = self._held.get(path)
            if held is None:
                return
            held.users -= 1
            if held.users <= 0:
                del self._held[path]
                os.ftruncate(held.fd, 0)  # no stale endpoint for the next reader
                os.close(held.fd)  # releases the lock

    def holds(self, chdb_dir: Path) -> bool:
        with self._lock:
            return lock_path(chdb_dir) in self._held

    def advertise(self, chdb_dir: Path, endpoint: Endpoint) -> None:
        """Tell readers where this process answers, whenever it holds the lock."""
        path = lock_path(chdb_dir)
        with self._lock:
            self._endpoints[path] = endpoint
            held = self._held.get(path)
            if held is not None:
                _write(held.fd, OwnerRecord(os.getpid(), endpoint.url, endpoint.token))


def _fields(endpoint: Endpoint | None) -> tuple[str | None, str | None]:
    return (endpoint.url, endpoint.token) if endpoint else (None, None)


def _try_lock(path: Path) -> int | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    os.fchmod(fd, _FILE_MODE)  # a file left by an older version may be wider
    return fd


def _write(fd: int, record: OwnerRecord) -> None:
    data = msgspec.json.encode(record)
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


# One per process: the lock is the process's, whatever part of it took it.
OWNERSHIP = Ownership()
