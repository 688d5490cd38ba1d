"""Versioned, idempotent schema migrations from ``infra/clickhouse/NNN_name.sql``.

Each file is applied once, in version order, and recorded in
``schema_migrations`` with a checksum. Every statement in the files is itself
idempotent (``IF NOT EXISTS``), so a crash half way through a file, or two
workers migrating at the same moment, simply re-runs it harmlessly. A file
edited after it was applied is an error: add a new migration instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from tierflow import infra
from tierflow.pipeline.archive.backend import Backend
from tierflow.pipeline.errors import TierflowError

MIGRATIONS_DIR = Path(infra.__file__).with_name("clickhouse")
_FILE = re.compile(r"^(?P<version>\d{3})_(?P<name>[a-z0-9_]+)\.sql$")

SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
"""


class MigrationError(TierflowError, RuntimeError):
    """The migration files or the recorded history are inconsistent."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        return split_statements(self.sql)


def split_statements(sql: str) -> list[str]:
    """Statements end with ';' at the end of a line (a trailing -- comment aside).
    Comment-only chunks are dropped; comments inside a statement are kept."""
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        code = line.split("--", 1)[0].rstrip()
        if code.endswith(";"):
            current.append(code[:-1])
            statements.append("\n".join(current))
            current = []
        else:
            current.append(line)
    statements.append("\n".join(current))
    return [s.strip() for s in statements if _has_code(s)]


def _has_code(chunk: str) -> bool:
    return any(line.split("--", 1)[0].strip() for line in chunk.splitlines())


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNN_name.sql")
        migrations.append(Migration(int(match["version"]), match["name"], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return migrations


def applied(backend: Backend) -> dict[int, str]:
    """Recorded migrations: version -> checksum."""
    backend.execute(SCHEMA_TABLE)
    rows = backend.query(
        "SELECT version, argMax(checksum, applied_at) FROM schema_migrations GROUP BY version"
    )
    return {int(version): str(checksum) for version, checksum in rows}


def pending(migrations: list[Migration], done: dict[int, str]) -> list[Migration]:
    """The migrations still to apply; an applied file that changed is an error."""
    for migration in migrations:
        recorded = done.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"migration {migration.version:03d}_{migration.name} changed after it was applied;"
                " add a new migration instead of editing an applied one"
            )
    return [m for m in migrations if m.version not in done]


def migrate(backend: Backend, directory: Path = MIGRATIONS_DIR, *, run: bool = True) -> list[Migration]:
    """Apply what is pending, in order; returns what was applied now. `run=False` only
    records them as applied: for a schema created by hand in another form (a cluster's
    replicated and distributed tables, docs/bi.md)."""
    todo = pending(load_migrations(directory), applied(backend))
    for migration in todo:
        for statement in migration.statements() if run else ():
            backend.execute(statement)
        backend.insert(
            "schema_migrations",
            [(migration.version, migration.name, migration.checksum)],
            ["version", "name", "checksum"],
        )
    return todo
