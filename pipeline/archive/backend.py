"""Where the archive lives: a ClickHouse server (``CLICKHOUSE_URL``) or embedded
chDB in a data directory.

Both run through clickhouse-connect: a server over HTTP(S), the embedded engine
through clickhouse-connect's ``chdb://`` transport. One client API means one
parameter binding (``{name:Type}`` placeholders, bound by the engine, never
spliced into SQL text), one type conversion and one error model, and every
test run on chDB exercises the same code a server deployment runs.

Embedded chDB allows one process per data directory (ClickHouse locks its
``status`` file). A process opens it only while it holds the owner lock beside it
(owner.py); opening a directory another process holds raises `ArchiveBusy`, which
names the owner, and readers then read through it (remote.py).

Inserts carry an ``insert_deduplication_token`` (batch.py derives it from the Kafka
offsets a batch covers), so a batch inserted again after a crash or a replay is
dropped by ClickHouse itself: by ReplicatedMergeTree on a cluster, by MergeTree with
``non_replicated_deduplication_window`` (migration 006) on one server and in chDB.

What "acknowledged" means for embedded chDB: the engine returned from the
insert *and* the data directory at the path is still the one it opened
(`ChdbBackend`). ClickHouse addresses its files by path and recreates missing
directories as it writes, so after the directory is removed (or replaced) an
insert "succeeds" into a fresh tree without the tables' metadata, and its rows
are gone at the next open. The check turns that into a failure the archive
writer holds and retries, like a server that is down.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from tierflow.pipeline.archive.config import ArchiveConfig, chdb_path
from tierflow.pipeline.archive.owner import OWNERSHIP, OwnerRecord, read_owner
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
    """Another process holds the embedded chDB data directory; `owner` is what it
    wrote about itself (None: not a tierflow process, or not written yet)."""

    def __init__(self, path: Path, owner: OwnerRecord | None = None) -> None:
        who = f" (pid {owner.pid})" if owner else ""
        super().__init__(f"the chDB data directory {path} is in use by another process{who}")
        self.path = path
        self.owner = owner


class ArchiveQueryError(TierflowError, ValueError):
    """ClickHouse refused a query (bad SQL, unknown table, not allowed read-only)."""


@dataclass(frozen=True)
class Table:
    """A query's result with its column names and ClickHouse types."""

    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]


# What a read-only query may not do: write, or change settings (on a server the user's
# profile decides the rest; see docs/bi.md).
READONLY = {"readonly": 1}


class Backend(Protocol):
    kind: str  # "server" or "chdb"
    display: str  # where it lives, without credentials

    def execute(self, sql: str, params: Params = None) -> None: ...

    def query(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]: ...

    def insert(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str], token: str | None = None
    ) -> None:
        """`token`: the insert's deduplication token; the same token again inserts nothing."""
        ...

    def select(self, sql: str, params: Params = None) -> Table:
        """A read-only query (readonly=1) with its column names and types; refused or
        failing SQL raises ArchiveQueryError."""
        ...

    def session(self) -> int:
        """Connect if needed; the connection's number, which changes after a reconnect
        (the archive then migrates again: the other side may be a new, empty archive)."""
        ...

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
        self, kind: str, dsn: str, display: str, database: str, *, create: bool = True,
        **client_args: Any,
    ) -> None:
        """`create`: create the database on connect (not for a read-only user)."""
        self.kind = kind
        self.display = display
        self.database = database
        self.create = create
        self._dsn = dsn
        self._client_args = client_args
        self._client: Client | None = None
        self._lock = threading.Lock()
        self.sessions = 0

    def connect(self) -> Client:
        """The client, connecting first if needed (creates the database)."""
        with self._lock:
            if self._client is None:
                client = self._open()
                try:
                    if self.create:
                        client.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
                    client.database = self.database
                except Exception:
                    client.close()
                    raise
                self._client = client
                self.sessions += 1
                if self.kind == "chdb":
                    with _OPEN_LOCK:
                        _OPEN_HERE[self._dsn] += 1
            return self._client

    def session(self) -> int:
        self.connect()
        return self.sessions

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

    def insert(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str], token: str | None = None
    ) -> None:
        if not rows:
            return
        self._call(
            "insert", _check_identifier(table), list(rows),
            column_names=[_check_identifier(c) for c in columns],
            settings={"insert_deduplication_token": token} if token else None,
        )

    def select(self, sql: str, params: Params = None) -> Table:
        try:
            result = self._call("query", sql, parameters=dict(params) if params else None,
                                settings=READONLY)
        except DatabaseError as exc:
            raise ArchiveQueryError(_clickhouse_message(exc)) from exc
        return Table(list(result.column_names), [t.name for t in result.column_types],
                     [tuple(row) for row in result.result_rows])

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


class ChdbBackend(ClickHouseBackend):
    """Embedded chDB in a data directory, checked around every call (see the module
    docstring): when the directory at the path is not the one the engine opened, the
    engine is closed and the call fails with ArchiveUnavailable. It reopens only once
    a directory is back at the path; it never creates one there itself, since a missing
    directory may be an unmounted volume (restore it, or create an empty directory to
    start a new archive)."""

    # What identifies the open archive: the directory, where the engine keeps table
    # metadata and data, and its lock file (`rm -rf dir/*` keeps the directory's inode).
    PARTS = ("", "metadata", "store", "status")

    def __init__(self, path: Path, database: str) -> None:
        super().__init__("chdb", f"chdb://{path}", f"chDB {path}", database)
        self.path = path
        self._opened: dict[str, tuple[int, int]] = {}
        self._owning = False  # this backend counts in the process's owner lock

    def _identity(self) -> dict[str, tuple[int, int]]:
        """(device, inode) of each part present now."""
        found = {}
        for part in self.PARTS:
            try:
                st = os.stat(self.path / part)
            except FileNotFoundError:
                continue
            found[part] = (st.st_dev, st.st_ino)
        return found

    def _own(self) -> None:
        """Hold the owner lock, and make sure no foreign process (one that does not take
        the lock, e.g. `clickhouse local`) has the directory open."""
        if self._owning:
            return
        if not OWNERSHIP.take(self.path):
            raise ArchiveBusy(self.path, read_owner(self.path))
        with _OPEN_LOCK:
            ours = self._dsn in _OPEN_HERE
        if not ours and held_elsewhere(self.path):
            OWNERSHIP.give_back(self.path)
            raise ArchiveBusy(self.path)
        self._owning = True

    def _disown(self) -> None:
        if self._owning:
            self._owning = False
            OWNERSHIP.give_back(self.path)

    def _open(self) -> Client:
        self._own()
        try:
            return self._open_owned()
        except BaseException:
            self._disown()
            raise

    def _open_owned(self) -> Client:
        before = self._identity()
        if "" not in before:
            raise ArchiveUnavailable(
                f"the chDB data directory {self.path} is missing; the archive holds until it is back"
                " (restore it, or create an empty directory there to start a new archive)"
            )
        client = super()._open()
        self._opened = self._identity()
        if self._opened.get("") != before[""]:
            client.close()
            raise ArchiveUnavailable(f"the chDB data directory {self.path} changed while it was being opened")
        return client

    def _verify(self) -> None:
        with self._lock:
            if self._client is None:
                return
            now = self._identity()
            intact = all(now.get(part) == ident for part, ident in self._opened.items())
            if intact:  # parts the engine created since it opened belong to it too
                self._opened = {**now, **self._opened}
                return
        self.close()
        raise ArchiveUnavailable(
            f"the chDB data directory {self.path} was removed or replaced while open;"
            " nothing written since counts as stored"
        )

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._verify()  # before: a vanished directory receives no writes, if we can help it
        result = super()._call(method, *args, **kwargs)
        self._verify()  # after: what was written landed in the directory still at the path
        return result

    def select(self, sql: str, params: Params = None) -> Table:
        try:
            return super().select(sql, params)
        except ArchiveQueryError:
            self._undo_sticky_readonly()
            raise

    def _undo_sticky_readonly(self) -> None:
        """chDB keeps readonly=1 in its session after some queries it refused in readonly
        mode (a write sent as a query), and the writer sharing the engine would then be
        refused too. A new connection starts from a clean session; the owner lock stays."""
        (value,), = self.query("SELECT value FROM system.settings WHERE name = 'readonly'")
        if str(value) != "0":
            log.warning("archive: chDB kept readonly=%s after a refused query; reconnecting", value)
            ClickHouseBackend.close(self)

    def close(self) -> None:
        super().close()
        self._disown()


def _clickhouse_message(exc: DatabaseError) -> str:
    """ClickHouse's own message on one line, without the driver's preamble, the
    settings and format the driver appended to the query, the parser's list of
    expected tokens or the version trailer."""
    text = " ".join(str(exc).split())
    start = text.rfind("DB::Exception:")
    if start >= 0:
        text = text[start + len("DB::Exception:"):].strip()
    text = re.split(r"\. Expected one of:", text)[0]
    text = re.sub(r"(\(line \d+, col \d+\)):.*", r"\1", text)
    text = re.sub(r"\s*SETTINGS readonly = '1'|\s*FORMAT Native|\s*\(version [^)]*\)", "", text)
    return text[:500]


def _brief(exc: BaseException) -> str:
    # clickhouse-connect messages can embed the request URL; keep the first line only
    # and never the userinfo part of a URL.
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.sub(r"//[^/@\s]+@", "//", text)


def open_backend(settings: Settings, cfg: ArchiveConfig, *, read_only: bool = False) -> ClickHouseBackend:
    """The server backend when CLICKHOUSE_URL is set, embedded chDB otherwise (its
    directory is created here, on first open only). `read_only`: a server user that
    may only read (the database is not created).

    Raises ArchiveBusy when another process holds the chDB directory.
    """
    if settings.clickhouse_url:
        url = settings.clickhouse_url
        return ClickHouseBackend(
            "server", url, server_display(url), server_database(url, cfg), create=not read_only,
            autogenerate_session_id=False,  # the writer and the dashboard share one client
        )
    path = chdb_path(cfg, settings.home).resolve()
    if not OWNERSHIP.take(path):  # before creating anything: the directory may be another's
        raise ArchiveBusy(path, read_owner(path))
    try:
        path.mkdir(parents=True, exist_ok=True)
        backend = ChdbBackend(path, cfg.database)
        backend.connect()  # take the directory now, so a second process sees it held
    finally:
        OWNERSHIP.give_back(path)  # the backend holds its own share from here on
    return backend
