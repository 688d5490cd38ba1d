"""Kafka records -> one batch of archive rows per table (routing is pure), and the
insert of a batch. The runtime that consumes, retries and commits is
tierflow.agents.archive."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from tierflow.pipeline.archive.backend import Backend
from tierflow.pipeline.archive.rows import (
    GRANT_COLUMNS,
    TIER_COLUMNS,
    TOUCH_COLUMNS,
    RecordError,
    Row,
    grant_row,
    tier_row,
    touch_row,
)
from tierflow.pipeline.erasure.topic import skipped
from tierflow.pipeline.ingest.validate import Limits, parse_record
from tierflow.schemas.erasures import Erasure

log = logging.getLogger("tierflow.archive")


def backoff_ms(attempt: int, initial_ms: int, max_ms: int) -> int:
    """Delay before retry number `attempt` (0-based): doubling, capped."""
    return min(initial_ms * 2 ** min(attempt, 32), max_ms)


@dataclass
class Batch:
    """Rows for each table plus the offsets to commit once they are stored."""

    records: int = 0
    touches: list[Row] = field(default_factory=list)
    tiers: list[Row] = field(default_factory=list)
    grants: list[Row] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    # (topic, partition) -> (first, last) offset of the records in the batch
    ranges: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)

    def note(self, topic: str, partition: int, offset: int) -> None:
        first, last = self.ranges.get((topic, partition), (offset, offset))
        self.ranges[(topic, partition)] = (min(first, offset), max(last, offset))

    def token(self, table: str) -> str:
        """The insert deduplication token of this batch's rows for `table`: the same
        records read again (a replay of the same offsets) give the same token."""
        spans = ",".join(f"{t}:{p}:{a}-{b}" for (t, p), (a, b) in sorted(self.ranges.items()))
        return f"{table}:{hashlib.sha256(spans.encode()).hexdigest()}"

    def tables(self) -> list[tuple[str, tuple[str, ...], list[Row]]]:
        return [
            ("touch_events", TOUCH_COLUMNS, self.touches),
            ("tier_changes", TIER_COLUMNS, self.tiers),
            ("reward_grants", GRANT_COLUMNS, self.grants),
        ]


def insert_batch(backend: Backend, batch: Batch) -> None:
    """Every table's rows; a failure part way is fine to retry: the tables that took
    their rows drop them the second time (same token), and duplicates that reach
    them anyway are absorbed by the tables' design."""
    for table, columns, rows in batch.tables():
        backend.insert(table, rows, columns, token=batch.token(table))


class RecordSorter:
    """Pure routing of Kafka records into a batch (no I/O)."""

    def __init__(self, inputs: tuple[str, ...], tier_topic: str, grant_topic: str, limits: Limits,
                 erased: Mapping[str, Erasure] | None = None):
        """`erased`: the erasure list (pipeline/erasure/topic.py); an erased customer's records
        below its marks are not archived."""
        self.inputs = frozenset(inputs)
        self.tier_topic = tier_topic
        self.grant_topic = grant_topic
        self.limits = limits
        self.erased = erased or {}

    def add(
        self, batch: Batch, topic: str, partition: int, offset: int,
        key: bytes | None, value: bytes | None, timestamp_ms: int,
    ) -> None:
        batch.records += 1
        batch.note(topic, partition, offset)
        source = (topic, partition, offset)
        if topic in self.inputs:
            valid, rejected = parse_record(value, key, self.limits, timestamp_ms)
            batch.touches.extend(touch_row(item, source) for item in valid
                                 if not skipped(self.erased, item.event.user_id, *source))
            batch.skipped.update(f"touch:{r.reason}" for r in rejected)
            return
        try:
            if topic == self.tier_topic:
                self._keep(batch, batch.tiers, tier_row(value, source), TIER_COLUMNS, source)
            elif topic == self.grant_topic:
                self._keep(batch, batch.grants, grant_row(value, source), GRANT_COLUMNS, source)
            else:
                batch.skipped["unknown_topic"] += 1
        except RecordError as exc:
            batch.skipped[f"{topic}:invalid"] += 1
            log.warning("archive: skipping %s[%d]@%d: %s", topic, partition, offset, exc)

    def _keep(self, batch: Batch, rows: list[Row], row: Row, columns: tuple[str, ...],
              source: tuple[str, int, int]) -> None:
        if skipped(self.erased, str(row[columns.index("user_id")]), *source):
            batch.skipped["erased"] += 1
        else:
            rows.append(row)
