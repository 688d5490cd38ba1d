"""The archive consumer: Kafka topics -> ClickHouse, in batches, offsets
committed only after ClickHouse accepted the batch.

It runs as its own consumer group (`<group><archive.group_suffix>`) on a
confluent-kafka consumer in a thread the worker starts, independent of the
ingest group: when ClickHouse is unreachable the archive stops advancing
while tiering goes on, and it catches up from its committed offsets when
ClickHouse returns. Nothing is lost, and the writer holds at most one batch:
while it retries, every assigned partition is paused (records that arrive
anyway are sought back), and the consumer keeps polling so it stays in its group.

Touch records are re-validated with the ingest's own parser; invalid ones are
skipped (ingest already dead-lettered them). To decide the same way on every
replay, "now" for the future-timestamp rule is the record's Kafka timestamp.

Exactness: a crash between insert and commit, a rebalance, or a duplicate
delivery re-inserts rows. Every table a user queries is built to absorb that
(ReplacingMergeTree keyed by the record's identity, aggregates over distinct
ids); see docs/bi.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from tierflow.pipeline.archive.backend import Backend, server_display
from tierflow.pipeline.archive.config import chdb_path
from tierflow.pipeline.archive.handle import Archive
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
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.ingest.validate import Limits, parse_record

log = logging.getLogger("tierflow.archive")

# How long one idle poll waits before the loop looks at its stop flag again.
IDLE_POLL_S = 0.5


def backoff_ms(attempt: int, initial_ms: int, max_ms: int) -> int:
    """Delay before retry number `attempt` (0-based): doubling, capped."""
    return min(initial_ms * 2 ** min(attempt, 32), max_ms)


def archive_group(ctx: Context) -> str:
    return ctx.settings.group_id + ctx.config.archive.group_suffix



@dataclass
class Batch:
    """Rows for each table plus the offsets to commit once they are stored."""

    records: int = 0
    touches: list[Row] = field(default_factory=list)
    tiers: list[Row] = field(default_factory=list)
    grants: list[Row] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)

    def tables(self) -> list[tuple[str, tuple[str, ...], list[Row]]]:
        return [
            ("touch_events", TOUCH_COLUMNS, self.touches),
            ("tier_changes", TIER_COLUMNS, self.tiers),
            ("reward_grants", GRANT_COLUMNS, self.grants),
        ]


def insert_batch(backend: Backend, batch: Batch) -> None:
    """Every table's rows; a failure part way is fine to retry (duplicates are absorbed)."""
    for table, columns, rows in batch.tables():
        backend.insert(table, rows, columns)


class RecordSorter:
    """Pure routing of Kafka records into a batch (no I/O)."""

    def __init__(self, inputs: tuple[str, ...], tier_topic: str, grant_topic: str, limits: Limits):
        self.inputs = frozenset(inputs)
        self.tier_topic = tier_topic
        self.grant_topic = grant_topic
        self.limits = limits

    def add(
        self, batch: Batch, topic: str, partition: int, offset: int,
        key: bytes | None, value: bytes | None, timestamp_ms: int,
    ) -> None:
        batch.records += 1
        batch.next_offsets[(topic, partition)] = offset + 1
        source = (topic, partition, offset)
        if topic in self.inputs:
            valid, rejected = parse_record(value, key, self.limits, timestamp_ms)
            batch.touches.extend(touch_row(item, source) for item in valid)
            batch.skipped.update(f"touch:{r.reason}" for r in rejected)
            return
        try:
            if topic == self.tier_topic:
                batch.tiers.append(tier_row(value, source))
            elif topic == self.grant_topic:
                batch.grants.append(grant_row(value, source))
            else:
                batch.skipped["unknown_topic"] += 1
        except RecordError as exc:
            batch.skipped[f"{topic}:invalid"] += 1
            log.warning("archive: skipping %s[%d]@%d: %s", topic, partition, offset, exc)


@dataclass
class WriterStatus:
    """What the writer is doing, for /api/archive/status and the logs."""

    state: str = "starting"  # starting | running | holding | stopped
    group: str = ""
    batches: int = 0
    records: int = 0
    rows: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    held_records: int = 0
    retries: int = 0
    last_error: str | None = None
    holding_since: float | None = None
    last_commit: float | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "group": self.group,
            "batches": self.batches,
            "records": self.records,
            "rows": dict(self.rows),
            "skipped": dict(self.skipped),
            "held_records": self.held_records,
            "retries": self.retries,
            "last_error": self.last_error,
            "holding_since": self.holding_since,
            "last_commit": self.last_commit,
        }


class ArchiveWriter:
    def __init__(
        self, ctx: Context, archive: Archive, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ctx = ctx
        self.archive = archive
        self.cfg = ctx.config.archive
        self.clock = clock
        topics = ctx.settings.topics
        self.topics = [*topics.inputs, topics.tier_changes, topics.reward_grants]
        self.sorter = RecordSorter(
            topics.inputs, topics.tier_changes, topics.reward_grants, Limits.of(ctx.config)
        )
        self.status = WriterStatus(group=archive_group(ctx))
        self.consumer = Consumer(
            ctx.settings.kafka.confluent(
                **{
                    "group.id": archive_group(ctx),
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                }
            )
        )

    def run(self, stop: threading.Event) -> None:
        """Consume, insert and commit until `stop` is set."""
        self.consumer.subscribe(self.topics)
        self.status.state = "running"
        log.info("archive consuming %s as group %s into %s", ", ".join(self.topics),
                 self.status.group, self._where())
        try:  # connect and migrate at start; if that fails, the first batch retries it
            self.archive.backend()
        except Exception as exc:
            log.warning("archive: ClickHouse not ready at start (%s: %s); records wait in Kafka",
                        type(exc).__name__, exc)
        try:
            while not stop.is_set():
                batch = self.collect(stop)
                if batch.records and self.store(batch, stop):
                    self.commit(batch)
        finally:
            self.status.state = "stopped"
            self.consumer.close()

    def _where(self) -> str:
        settings = self.ctx.settings
        if settings.clickhouse_url:
            return server_display(settings.clickhouse_url)
        return f"chDB {chdb_path(self.cfg, settings.home)}"

    def collect(self, stop: threading.Event) -> Batch:
        """Up to batch_max_records records, or what arrived within flush_interval_ms
        of the first one. Returns an empty batch after an idle poll."""
        batch = Batch()
        limit = self.cfg.batch_max_records
        deadline: float | None = None
        while not stop.is_set() and batch.records < limit:
            now = self.clock()
            timeout = IDLE_POLL_S if deadline is None else max(deadline - now, 0.0)
            messages = self.consumer.consume(limit - batch.records, timeout)
            for msg in messages:
                if self._is_noise(msg):
                    continue
                if deadline is None:
                    deadline = self.clock() + self.cfg.flush_interval_ms / 1000
                kind, stamp = msg.timestamp()
                self.sorter.add(
                    batch, msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                    stamp if kind != 0 and stamp > 0 else int(time.time() * 1000),
                )
            if deadline is None and not messages:
                break
            if deadline is not None and self.clock() >= deadline:
                break
        return batch

    def _is_noise(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() not in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
            log.warning("archive consumer error: %s", err)
        return True

    def store(self, batch: Batch, stop: threading.Event) -> bool:
        """Insert the batch, retrying with backoff while ClickHouse is unreachable.
        False when asked to stop first (the batch is then replayed next start)."""
        attempt = 0
        while True:
            try:
                insert_batch(self.archive.backend(), batch)
            except Exception as exc:  # any failure: hold the batch, never drop it
                delay = backoff_ms(attempt, self.cfg.retry_initial_ms, self.cfg.retry_max_ms)
                delay /= 1000
                attempt += 1
                self._hold(batch, exc, attempt, delay)
                if not self._wait_paused(delay, stop):
                    return False
                continue
            if attempt:
                log.warning("archive: ClickHouse accepted the held batch after %d retries;"
                            " catching up", attempt)
                self.consumer.resume(self.consumer.assignment())
            self.status.state = "running"
            self.status.held_records = 0
            self.status.holding_since = None
            self.status.last_error = None
            return True

    def _hold(self, batch: Batch, exc: Exception, attempt: int, delay: float) -> None:
        if self.status.state != "holding":
            self.status.holding_since = time.time()
            self.consumer.pause(self.consumer.assignment())
        self.status.state = "holding"
        self.status.held_records = batch.records
        self.status.retries += 1
        self.status.last_error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "archive: cannot write to ClickHouse (%s); holding %d records uncommitted "
            "(nothing is lost, tiering continues); retry %d in %.1fs",
            self.status.last_error, batch.records, attempt, delay,
        )

    def _wait_paused(self, seconds: float, stop: threading.Event) -> bool:
        """Wait while staying in the consumer group; records fetched despite the
        pause (partitions assigned meanwhile) are sought back for later."""
        deadline = self.clock() + seconds
        while not stop.is_set():
            remaining = deadline - self.clock()
            if remaining <= 0:
                return True
            stray = self.consumer.consume(self.cfg.batch_max_records, min(remaining, IDLE_POLL_S))
            self._push_back([m for m in stray if m.error() is None])
        return False

    def _push_back(self, messages: list[Message]) -> None:
        first: dict[tuple[str, int], int] = {}
        for msg in messages:
            first.setdefault((msg.topic(), msg.partition()), msg.offset())
        if not first:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in first.items()]
        self.consumer.pause(tps)
        for tp in tps:
            self.consumer.seek(tp)

    def commit(self, batch: Batch) -> None:
        self.status.batches += 1
        self.status.records += batch.records
        for table, _columns, rows in batch.tables():
            self.status.rows[table] += len(rows)
        self.status.skipped.update(batch.skipped)
        try:
            self.consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in batch.next_offsets.items()],
                asynchronous=False,
            )
            self.status.last_commit = time.time()
        except KafkaException as exc:
            # Lost a partition in a rebalance: its new owner re-inserts, which the tables absorb.
            log.warning("archive: offset commit failed (%s); the batch will be replayed harmlessly",
                        exc)


# Restart delays after the writer itself crashed (not ClickHouse outages: the
# writer rides those out on its own), like the worker's ingest supervisor.
RESTART_BACKOFF_S = (1, 2, 5, 10, 30)


class ArchiveThread:
    """The writer in a daemon thread, restarted after unexpected failures.

    The worker creates one per process: `start()` when it starts, `stop()` when
    it stops; `status()` feeds /api/archive/status.
    """

    def __init__(self, ctx: Context, archive: Archive) -> None:
        self.ctx = ctx
        self.archive = archive
        self.stop_event = threading.Event()
        self.writer: ArchiveWriter | None = None
        self.thread: threading.Thread | None = None

    def supervise(self) -> None:
        failures = 0
        while not self.stop_event.is_set():
            try:
                self.writer = ArchiveWriter(self.ctx, self.archive)
                self.writer.run(self.stop_event)
                failures = 0
            except Exception:
                delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
                failures += 1
                log.exception("archive writer failed; restarting in %ss", delay)
                self.stop_event.wait(delay)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.supervise, name="tierflow-archive", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def status(self) -> dict[str, Any]:
        if self.writer is None:
            return WriterStatus(state="starting").snapshot()
        return self.writer.status.snapshot()
