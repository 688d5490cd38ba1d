"""The `[archive]` section: how the ClickHouse archive batches, retries and where
embedded chDB keeps its data. Defaults live in pipeline/config/defaults/archive.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec

# librdkafka drops a consumer from its group when it does not poll for
# max.poll.interval.ms (default 300 s); the writer sleeps between retries
# without polling, so its longest sleep must stay well below that.
MAX_RETRY_MS = 120_000


class ArchiveConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Run the archive consumer inside the worker at all.
    enabled: bool
    # ClickHouse database holding every archive table (created by `tierflow migrate`).
    database: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
    # Embedded chDB data directory; empty means <TIERFLOW_HOME>/chdb.
    chdb_dir: str
    # The archive's own consumer group is the worker's group id plus this suffix.
    group_suffix: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    # A batch closes at this many Kafka records or after flush_interval_ms, whichever first.
    # It is also the memory bound: the writer never holds more than one batch.
    batch_max_records: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    flush_interval_ms: Annotated[int, msgspec.Meta(ge=1, le=600_000)]
    # Retry a failed insert after retry_initial_ms, doubling up to retry_max_ms.
    retry_initial_ms: Annotated[int, msgspec.Meta(ge=1)]
    retry_max_ms: Annotated[int, msgspec.Meta(ge=1, le=MAX_RETRY_MS)]
    # How long a reader waits for the answer of the process that owns the embedded
    # archive (embedded chDB allows one process per data directory, so others read through it).
    worker_api_timeout_s: Annotated[float, msgspec.Meta(gt=0)]
    # Embedded chDB: how often a standby worker tries to take over the archive.
    standby_poll_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)]
    # The archive group's Kafka session timeout: how soon a dead writer's partitions go
    # to the others (with a server; embedded chDB's next owner replaces it at once).
    session_timeout_ms: Annotated[int, msgspec.Meta(ge=3_000, le=300_000)]


def chdb_path(cfg: ArchiveConfig, home: Path) -> Path:
    """The embedded engine's data directory."""
    return Path(cfg.chdb_dir).expanduser() if cfg.chdb_dir else home / "chdb"
