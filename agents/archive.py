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

With embedded chDB (no CLICKHOUSE_URL) one process owns the archive: a writer
consumes only while its process holds the owner lock (pipeline/archive/owner.py).
With N workers one archives and the others stand by, polling the lock every
`archive.standby_poll_ms`; when the owner dies the kernel frees its lock, a
standby takes it, joins the archive group under the same static member id
(so it replaces the dead member at once) and resumes from the committed offsets.
With a ClickHouse server every worker's writer joins the group and writes.

Exactness: a crash between insert and commit, a rebalance, or a duplicate
delivery re-inserts rows. Inserts carry deduplication tokens (the same batch is
dropped by ClickHouse), and every table a user queries is built to absorb the
rest (ReplacingMergeTree keyed by the record's identity, aggregates over
distinct ids); see docs/bi.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from tierflow.agents.checkpoint import Checkpoint
from tierflow.agents.supervisor import Supervisor, hosted
from tierflow.pipeline.archive.backend import ArchiveBusy, server_display
from tierflow.pipeline.archive.batch import Batch, RecordSorter, backoff_ms, insert_batch
from tierflow.pipeline.archive.config import chdb_path
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.archive.owner import read_owner
from tierflow.pipeline.archive.remote import add_sql_route
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.dashboard.server import add_routes
from tierflow.pipeline.erasure import topic as erasures
from tierflow.pipeline.ingest.validate import Limits
from tierflow.pipeline.kafka import clients

log = logging.getLogger("tierflow.archive")

# How long one idle poll waits before the loop looks at its stop flag again.
IDLE_POLL_S = 0.5


def archive_group(ctx: Context) -> str:
    return ctx.settings.group_id + ctx.config.archive.group_suffix


@dataclass
class WriterStatus:
    """What the writer is doing, for /api/archive/status and the logs."""

    state: str = "starting"  # starting | standby | running | holding | stopped
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
            topics.inputs, topics.tier_changes, topics.reward_grants, Limits.of(ctx.config.ingest),
            erasures.load(ctx.settings),  # `tierflow forget` runs with the workers stopped
        )
        self.status = WriterStatus(group=archive_group(ctx))
        self.consumer: Consumer = self._new_consumer()
        self.checkpoint = Checkpoint(self.consumer, "archive")

    def _new_consumer(self) -> Consumer:
        session_ms = self.cfg.session_timeout_ms
        group = archive_group(self.ctx)
        conf: dict[str, object] = {"auto.offset.reset": "earliest", "session.timeout.ms": session_ms,
                                   "heartbeat.interval.ms": max(session_ms // 3, 1)}
        if self.archive.embedded:
            # One static member, whichever process owns the archive: a successor replaces a
            # dead owner in the group at once instead of waiting out its session.
            conf["group.instance.id"] = f"{group}-owner"
        return clients.consumer(self.ctx.settings.kafka, group, **conf)

    def run(self, stop: threading.Event) -> None:
        """Consume, insert and commit until `stop` is set; with embedded chDB, only
        while this process owns the archive."""
        try:
            if self.own(stop):
                try:
                    self.consume(stop)
                finally:
                    self.archive.release()
        finally:
            self.status.state = "stopped"
            clients.close_subscribed(self.consumer, self.ctx.config.worker.leave_wait_s)

    def own(self, stop: threading.Event) -> bool:
        """Wait until this process owns the archive (at once with a server); False
        when asked to stop first."""
        announced = False
        while not self.archive.claim():
            if not announced:
                busy = ArchiveBusy(self.archive.chdb_dir, read_owner(self.archive.chdb_dir))
                self.status.state = "standby"
                self.status.last_error = str(busy)
                log.info("archive: standing by: %s; taking over when it stops", busy)
                announced = True
            if stop.wait(self.cfg.standby_poll_ms / 1000):
                return False
        if announced:
            log.warning("archive: this worker now owns the archive at %s", self._where())
            self.status.last_error = None
        return True

    def consume(self, stop: threading.Event) -> None:
        self.consumer.subscribe(self.topics)
        self.status.state = "running"
        log.info("archive consuming %s as group %s into %s", ", ".join(self.topics),
                 self.status.group, self._where())
        try:  # connect and migrate at start; if that fails, the first batch retries it
            self.archive.backend()
        except Exception as exc:
            log.warning("archive: ClickHouse not ready at start (%s: %s); records wait in Kafka",
                        type(exc).__name__, exc)
        while not stop.is_set():
            batch = self.collect(stop)
            if batch.records and self.store(batch, stop):
                self.commit(batch)

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
                self.checkpoint.track(msg.topic(), msg.partition(), msg.offset())
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
        # A refused commit (a rebalance moved the partitions) is replayed by the new
        # owner, and the tables absorb the re-inserted rows.
        if self.checkpoint.commit():
            self.status.last_commit = time.time()


class ArchiveThread:
    """The writer under the supervisor, restarted after unexpected failures (not
    ClickHouse outages: the writer rides those out on its own). The worker runs
    one per process; `status()` feeds /api/archive/status."""

    def __init__(self, ctx: Context, archive: Archive) -> None:
        self.ctx = ctx
        self.archive = archive
        self.writer: ArchiveWriter | None = None
        self.supervisor = Supervisor("archive", self._run, ctx.config.worker.restart_backoff_s)

    def _run(self, stop: threading.Event) -> None:
        self.writer = ArchiveWriter(self.ctx, self.archive)
        self.writer.run(stop)

    def start(self) -> None:
        self.supervisor.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.supervisor.stop(timeout_s)

    def status(self) -> dict[str, Any]:
        if self.writer is None:
            return WriterStatus(state="starting").snapshot()
        return self.writer.status.snapshot()


def install_archive(app: faust.App, ctx: Context) -> Archive:
    """Mount the dashboard, its JSON API and the archive's SQL endpoint on the worker's
    web server and, when `archive.enabled`, run the archive writer while the worker
    runs. They share one `Archive`, so an embedded chDB directory is opened once per
    process; the dashboard of a worker that does not own it reads through the owner."""
    archive = Archive(ctx.settings, ctx.config.archive)
    writer = ArchiveThread(ctx, archive) if ctx.config.archive.enabled else None
    # Readers in other processes query the embedded archive through whichever worker owns it.
    archive.serve_reads(ctx.settings.web_host, ctx.settings.web_port)
    add_sql_route(app.web.web_app.router, archive)

    app.service(hosted(app, writer.supervisor if writer else None, ctx.config.worker.stop_timeout_s, archive.close))
    add_routes(
        app.web.web_app.router, archive, ctx.config, host=ctx.settings.web_host,
        token=ctx.settings.dashboard_token, status=writer.status if writer else None,
    )
    return archive
