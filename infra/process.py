"""Process and file helpers shared by the local services' start/stop code."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

# A user name that a local service's configuration file can hold unquoted.
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def alive(pid: int) -> bool:
    # A zombie (exited, not yet reaped by whoever adopted it) still has a /proc entry.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by its owner only from the first byte
    (the local services' configuration files may hold credentials)."""
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(text)


def terminate(pid: int, timeout_s: float, poll_s: float = 0.1) -> None:
    """SIGTERM (the service's clean shutdown), then SIGKILL if it outlives `timeout_s`."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(poll_s)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(poll_s)
