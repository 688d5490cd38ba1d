"""One process's way into the archive, shared by the archive writer thread and
the dashboard routes: opens the backend on first use, migrates it once per
connection (a reconnect may reach a new, empty archive: a restarted server, a
recreated chDB directory), and retries both on the next call after a failure
(ClickHouse down, chDB data directory held by another process or gone)."""

from __future__ import annotations

import threading

from tierflow.pipeline.archive.backend import Backend, open_backend
from tierflow.pipeline.archive.config import ArchiveConfig
from tierflow.pipeline.archive.migrate import applied, migrate
from tierflow.pipeline.config.settings import Settings


class Archive:
    def __init__(self, settings: Settings, cfg: ArchiveConfig) -> None:
        self.settings = settings
        self.cfg = cfg
        self._backend: Backend | None = None
        self._migrated: int | None = None  # the backend session migrated
        self._lock = threading.Lock()

    def backend(self) -> Backend:
        """The migrated backend. Raises ArchiveUnavailable (or ArchiveBusy) while
        it cannot be reached; call again later."""
        with self._lock:
            if self._backend is None:
                self._backend = open_backend(self.settings, self.cfg)
            session = self._backend.session()
            if session != self._migrated:
                migrate(self._backend)
                self._migrated = session
            return self._backend

    def migrations(self) -> list[int]:
        """Versions recorded in schema_migrations."""
        return sorted(applied(self.backend()))

    def close(self) -> None:
        with self._lock:
            backend, self._backend = self._backend, None
            self._migrated = None
        if backend is not None:
            backend.close()
