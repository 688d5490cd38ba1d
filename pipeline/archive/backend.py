"""Where the archive lives: a ClickHouse server (``CLICKHOUSE_URL``) or embedded
chDB in a data directory.

Both run through clickhouse-connect: a server over HTTP(S), the embedded engine
through clickhouse-connect's ``chdb://`` transport. One client API means one
parameter binding (``{name:Type}`` placeholders, bound by the engine, never
spliced into SQL text), one type conversion and one error model, and every
test run on chDB exercises the same code a server deployment runs.

Embedded chDB allows one process per data directory (ClickHouse locks its
``status`` file). Opening a directory another process holds raises
`ArchiveBusy`; the CLI then asks the worker that holds it (pipeline/cli/commands/archive.py).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import re
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError

from tierflow.pipeline.archive.config import ArchiveConfig, chdb_path
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.errors import TierflowError

log = logging.getLogger("tierflow.archive")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")

Params = Mapping[str, Any] | None

# chDB directories this process has open, with how many backends use each:
# clickhouse-connect shares one engine per directory within a process.
_OPEN_HERE: Counter[str] = Counter()
_OPEN_LOCK = threading.Lock()


class ArchiveUnavailable(TierflowError, RuntimeError):
    """ClickHouse cannot be reached right now (server down, network, data dir held)."""


class ArchiveBusy(ArchiveUnavailable):
    """Another process holds the embedded chDB data directory."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"the chDB data directory {path} is in use by another process")
        self.path = path


class Backend(Protocol):
    kind: str  # "server" or "chdb"
    display: str  # where it lives, without credentials

    def execute(self, sql: str, params: Params = None) -> None: ...

    def query(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]: ...

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None: ...

    def close(self) -> None: ...


def held_elsewhere(path: Path) -> bool:
    """True when another process runs an embedded ClickHouse in `path`.

    ClickHouse takes an exclusive flock on <path>/status for its lifetime. Probe
    it before connecting: a failed connect leaves noise on stderr and, in this
    chdb release, cannot be retried in the same process. Only meaningful while
    this process has not opened `path` itself (flock would see our own lock),
    hence `_OPEN_HERE`.
    """
    status = path / "status"
    try:
        fd = status.open("rb")
    except FileNotFoundError:
        return False
    with fd:
        try:
            fcntl.flock(fd.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return True
            raise
        fcntl.flock(fd.fileno(), fcntl.LOCK_UN)
    return False


def _check_identifier(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return name


def server_display(url: str) -> str:
    """scheme://host:port of a ClickHouse URL: never the credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}".rstrip(":")


def server_database(url: str, cfg: ArchiveConfig) -> str:
    """A database named in the URL path wins over archive.database."""
    path = urlsplit(url).path.strip("/")
    return _check_identifier(path) if path else cfg.database


class ClickHouseBackend:
    """A clickhouse-connect client, connected lazily and re-created after a
    connection failure, so a backend outlives a ClickHouse outage."""

    def __init__(
        self, kind: str, dsn: str, display: str, database: str, **client_args: Any
    ) -> None:
        self.kind = kind
        self.display = display
        self.database = database
        self._dsn = dsn
        self._client_args = client_args
        self._client: Client | None = None
        self._lock = threading.Lock()

    def connect(self) -> Client:
        """The client, connecting first if needed (creates the database)."""
        with self._lock:
            if self._client is None:
                client = self._open()
                try:
                    client.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
                    client.database = self.database
                except Exception:
                    client.close()
                    raise
                self._client = client
                if self.kind == "chdb":
                    with _OPEN_LOCK:
                        _OPEN_HERE[self._dsn] += 1
            return self._client

    def _open(self) -> Client:
        try:
            # Connect to the always-present default database; ours may not exist yet.
            return clickhouse_connect.get_client(
                dsn=self._dsn, database="default", **self._client_args
            )
        except OperationalError as exc:
            raise self._unreachable(exc) from exc

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        client = self.connect()
        try:
            return getattr(client, method)(*args, **kwargs)
        except OperationalError as exc:
            self._drop()
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: OperationalError) -> ArchiveUnavailable:
        return ArchiveUnavailable(f"ClickHouse at {self.display} is unreachable: {_brief(exc)}")

    def _drop(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self.kind == "server":
            client.close()

    def execute(self, sql: str, params: Params = None) -> None:
        self._call("command", sql, parameters=dict(params) if params else None)

    def query(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]:
        result = self._call("query", sql, parameters=dict(params) if params else None)
        return [tuple(row) for row in result.result_rows]

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None:
        if not rows:
            return
        self._call(
            "insert", _check_identifier(table), list(rows),
            column_names=[_check_identifier(c) for c in columns],
        )

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
            if self.kind == "chdb":
                with _OPEN_LOCK:
                    _OPEN_HERE[self._dsn] -= 1
                    if _OPEN_HERE[self._dsn] <= 0:
                        del _OPEN_HERE[self._dsn]


def _brief(exc: BaseException) -> str:
    # clickhouse-connect messages can embed the request URL; keep the first line only
    # and never the userinfo part of a URL.
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.sub(r"//[^/@\s]+@", "//", text)


def open_backend(settings: Settings, cfg: ArchiveConfig) -> ClickHouseBackend:
    """The server backend when CLICKHOUSE_URL is set, embedded chDB otherwise.

    Raises ArchiveBusy when another process holds the chDB directory.
    """
    if settings.clickhouse_url:
        url = settings.clickhouse_url
        return ClickHouseBackend(
            "server", url, server_display(url), server_database(url, cfg),
            autogenerate_session_id=False,  # the writer and the dashboard share one client
        )
    path = chdb_path(cfg, settings.home).resolve()
    dsn = f"chdb://{path}"
    with _OPEN_LOCK:
        ours = dsn in _OPEN_HERE
    if not ours and held_elsewhere(path):
        raise ArchiveBusy(path)
    path.mkdir(parents=True, exist_ok=True)
    backend = ClickHouseBackend("chdb", dsn, f"chDB {path}", cfg.database)
    backend.connect()  # take the directory now, so a second process sees it held
    return backend
