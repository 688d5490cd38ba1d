"""One process's way into the archive, shared by the archive writer thread and
the dashboard routes: opens the backend on first use, migrates it once per
connection (a reconnect may reach a new, empty archive: a restarted server, a
recreated chDB directory), and retries both on the next call after a failure
(ClickHouse down, chDB data directory held by another process or gone).

With embedded chDB, one process owns the archive (owner.py): `claim()` is how the
archive writer becomes that process, `reader()` how anyone else reads, through
the owner when this process is not it."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

from tierflow.pipeline.archive.backend import ArchiveBusy, Backend, open_backend
from tierflow.pipeline.archive.config import ArchiveConfig, chdb_path
from tierflow.pipeline.archive.migrate import migrate
from tierflow.pipeline.archive.owner import OWNERSHIP, Endpoint, loopback_url
from tierflow.pipeline.archive.remote import RemoteBackend
from tierflow.pipeline.config.settings import Settings


class Archive:
    def __init__(self, settings: Settings, cfg: ArchiveConfig, *, read_only: bool = False) -> None:
        """`read_only`: for readers only (`tierflow sql`): on a server, create and migrate
        nothing, so a user with readonly=1 in its profile can read. Embedded chDB is
        migrated by whichever process opens it."""
        self.settings = settings
        self.cfg = cfg
        self.read_only = read_only and not self.embedded
        self._backend: Backend | None = None
        self._migrated: int | None = None  # the backend session migrated
        self._lock = threading.Lock()
        self._claims = 0
        # What a reader in another process presents to this one's SQL endpoint.
        self.read_token = secrets.token_urlsafe(32)

    @property
    def embedded(self) -> bool:
        """Embedded chDB: one process at a time owns the archive."""
        return not self.settings.clickhouse_url

    @property
    def chdb_dir(self) -> Path:
        return chdb_path(self.cfg, self.settings.home).resolve()

    def backend(self) -> Backend:
        """The migrated backend. Raises ArchiveUnavailable (or ArchiveBusy) while
        it cannot be reached; call again later."""
        with self._lock:
            if self._backend is None:
                self._backend = open_backend(self.settings, self.cfg, read_only=self.read_only)
            session = self._backend.session()
            if session != self._migrated and not self.read_only:
                migrate(self._backend)
                self._migrated = session
            return self._backend

    def reader(self) -> Backend:
        """For queries: this process's backend, or, while another process owns the
        embedded archive and answers reads, that process's (read-only)."""
        try:
            return self.backend()
        except ArchiveBusy as busy:
            endpoint = busy.owner.endpoint() if busy.owner else None
            if busy.owner is None or endpoint is None:
                raise
            return RemoteBackend(endpoint, busy.owner.pid, self.cfg.worker_api_timeout_s,
                                 self.settings.dashboard_token)

    def claim(self) -> bool:
        """Become (or stay) the process that owns the embedded archive; True for a
        server, which every process writes. Held until `release()`."""
        if not self.embedded:
            return True
        if not OWNERSHIP.take(self.chdb_dir):
            return False
        self._claims += 1
        return True

    def release(self) -> None:
        if self._claims:
            self._claims -= 1
            OWNERSHIP.give_back(self.chdb_dir)

    def serve_reads(self, host: str, port: int) -> None:
        """This process answers the SQL endpoint on `host`:`port`; say so in the owner
        file whenever it owns the embedded archive."""
        if self.embedded:
            OWNERSHIP.advertise(self.chdb_dir, Endpoint(loopback_url(host, port), self.read_token))

    def migrations(self) -> list[int]:
        """Versions recorded in schema_migrations."""
        rows = self.reader().query("SELECT DISTINCT version FROM schema_migrations ORDER BY version")
        return [int(version) for (version,) in rows]

    def close(self) -> None:
        with self._lock:
            backend, self._backend = self._backend, None
            self._migrated = None
        if backend is not None:
            backend.close()
