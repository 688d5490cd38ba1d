"""Ingest: input topics -> validation -> per-user state in Redis -> the stages.

The hot path runs on a confluent-kafka consumer in its own thread (hosted by
the Faust worker, see agents/app.py): a Faust stream moves ~8k records/s per
process, librdkafka ~170k/s, and batching is what lets Redis keep up. Per
consumer batch: validate every record, dead-letter what is invalid, apply the
rest with one Lua call per user in a single pipelined round trip, run the
stages (tiers, rewards) over what was applied, then let the checkpoint commit
the offsets once the dead letters are delivered. A record that makes the worker
raise (a bug, or state damaged outside tierflow) is dead-lettered as
`internal_error` and the rest goes on; an outage fails the batch whole. A crash
before the commit replays the batch; the Lua script's per-source offset watermarks
make that a no-op (and its bounded id window skips an app's resends), and every stage is idempotent.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import msgspec
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from tierflow.agents.checkpoint import Checkpoint
from tierflow.agents.clock import wall_ms
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.erasure import topic as erasures
from tierflow.pipeline.ingest.deadletter import DeadLetters, Source, internal_error, refused
from tierflow.pipeline.ingest.validate import Limits, Rejection, ValidEvent, parse_record
from tierflow.pipeline.kafka import clients
from tierflow.pipeline.kafka.errors import DeliveryError
from tierflow.pipeline.kafka.publisher import Delivery, Publisher
from tierflow.pipeline.state.store import Group, StateStore
from tierflow.pipeline.state.summary import encode

log = logging.getLogger("tierflow.ingest")

# A service failing, not a record: the batch fails whole and the supervisor retries it later.
_OUTAGES = (redis.ConnectionError, redis.TimeoutError, OSError, KafkaException, DeliveryError)
# Redis error codes that refuse any write (memory, failover, loading, persistence, access).
_REDIS_REFUSALS = frozenset({
    "OOM", "READONLY", "LOADING", "MASTERDOWN", "MISCONF", "NOREPLICAS", "BUSY", "CLUSTERDOWN", "TRYAGAIN",
    "NOPERM", "NOAUTH", "WRONGPASS", "NOSCRIPT",
})


def is_outage(exc: Exception) -> bool:
    if isinstance(exc, _OUTAGES):
        return True
    # A pipeline prefixes the server's reply ("Command # 1 (...) of pipeline caused error: OOM ...").
    code = str(exc).rsplit("caused error: ", 1)[-1].split(" ", 1)[0]
    return isinstance(exc, redis.ResponseError) and code in _REDIS_REFUSALS


@dataclass
class _Record:
    """One consumed record: its valid events (encoded for apply.lua) and its rejections,
    to which the events the store refuses are added."""

    source: Source
    valid: list[ValidEvent]
    encoded: list[list[object]]
    rejected: list[Rejection]
    refused: set[int] = field(default_factory=set)

    def set_aside(self, exc: Exception) -> None:
        """The record made the worker raise: none of it is applied, it is dead-lettered."""
        rejection = internal_error(exc)
        where = f"{self.source.topic}[{self.source.partition}]@{self.source.offset}"
        log.error("ingest: record %s set aside as internal_error (%s)", where, rejection.detail, exc_info=exc)
        self.valid, self.encoded, self.rejected = [], [], [*self.rejected, rejection]

    def fail(self, failed: Mapping[str, Rejection]) -> None:
        """A stage raised for these customers: their events here are dead-lettered. Their
        state stays applied, so a replay of the letter only re-runs the stages."""
        if not failed:
            return
        for item in self.applied():
            rejection = failed.get(item.event.user_id)
            if rejection is not None:
                event = msgspec.to_builtins(item.event)
                self.rejected.append(replace(rejection, event_index=item.index, event=event))

    def refuse(self, position: int, reason: str) -> None:
        self.refused.add(position)
        self.rejected.append(refused(self.valid[position], reason))

    def applied(self) -> list[ValidEvent]:
        return [item for i, item in enumerate(self.valid) if i not in self.refused]


@dataclass
class AppliedBatch:
    """What one consumer batch changed, handed to the downstream stages."""

    events: list[ValidEvent]
    applied: int
    now_ms: int
    # Every user of the batch, with an input partition their events arrived on (where a
    # new user's output lane goes).
    partitions: dict[str, int]

    @property
    def users(self) -> set[str]:
        return set(self.partitions)

    def only(self, users: Collection[str]) -> AppliedBatch:
        """These users' part of the batch (`applied` stays the batch's count: no stage reads it)."""
        keep = set(users)
        return AppliedBatch([item for item in self.events if item.event.user_id in keep], self.applied,
                            self.now_ms, {user: p for user, p in self.partitions.items() if user in keep})


@dataclass
class IngestStats:
    records: int = 0
    events: int = 0
    applied: int = 0
    rejected: int = 0
    batches: int = 0
    reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Stage(Protocol):
    """A step that runs over every applied batch, before its offsets are committed."""

    def run(self, batch: AppliedBatch) -> None: ...


class CustomerStage(ABC):
    """A stage whose work is each customer's own (tiers, rewards): when it raises for a
    batch, the loop can tell which customers it raises for by running it on fewer."""

    @abstractmethod
    def run(self, batch: AppliedBatch) -> None: ...


class PartitionOwner(Protocol):
    """Told which input partitions the consumer holds (from inside `consume`, on the
    ingest thread), and when a poll brought nothing: agents/outputs.py publishes the
    output lanes that go with the partitions."""

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None: ...

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None: ...

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None: ...

    def idle(self) -> None: ...


class IngestLoop:
    def __init__(self, ctx: Context, store: StateStore, publisher: Publisher, stages: Sequence[Stage] = (),
                 owner: PartitionOwner | None = None) -> None:
        self.ctx = ctx
        self.store = store
        self.publisher = publisher
        self.stages = list(stages)
        self.owner = owner
        self.stats = IngestStats()
        self.limits = Limits.of(ctx.config.ingest)
        self.letters = DeadLetters(ctx.config.ingest)
        # Customers erased by `tierflow forget` (which runs with the workers stopped): their
        # events below the erasure's marks are dropped, neither applied nor dead-lettered.
        self.erased = erasures.load(ctx.settings)
        self.consumer = clients.consumer(
            ctx.settings.kafka,
            ctx.settings.group_id,
            **{
                "auto.offset.reset": "earliest",
                # Range gives one worker the same partition of every input topic (they have
                # equal partition counts), so it also owns the output lane of that number.
                "partition.assignment.strategy": "range",
                "session.timeout.ms": ctx.config.worker.session_timeout_ms,
                "heartbeat.interval.ms": ctx.config.worker.heartbeat_ms,
                "fetch.wait.max.ms": ctx.config.ingest.batch_max_ms,
            },
        )
        self.checkpoint = Checkpoint(self.consumer, "ingest")

    def run(self, stop: threading.Event) -> None:
        cfg = self.ctx.config.ingest
        owner = self.owner
        listeners = {} if owner is None else {
            "on_assign": owner.on_assign, "on_revoke": owner.on_revoke, "on_lost": owner.on_lost}
        self.consumer.subscribe(list(self.ctx.settings.topics.inputs), **listeners)
        log.info("ingest consuming %s as group %s", ", ".join(self.ctx.settings.topics.inputs),
                 self.ctx.settings.group_id)
        try:
            while not stop.is_set():
                messages = self._take(cfg.batch_max_records, cfg.batch_max_ms / 1000)
                if messages:
                    self.process(messages)
                elif owner is not None:
                    owner.idle()
        finally:
            clients.close_subscribed(self.consumer, self.ctx.config.worker.leave_wait_s)

    def _take(self, most: int, wait_s: float) -> list[Message]:
        """The next batch: every record already fetched, up to `most`, waiting up to `wait_s`
        for the first one only. A batch that takes T to process lets what arrives meanwhile
        gather for the next, so batches grow with the load on their own, and at a low rate a
        record is processed as soon as it arrives instead of after a fixed window."""
        first = self.consumer.consume(1, wait_s)
        return first + self.consumer.consume(most - 1, 0) if first and most > 1 else first

    def process(self, messages: list[Message]) -> AppliedBatch:
        now_ms = wall_ms()
        records: list[_Record] = []
        for msg in messages:
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", msg.error())
                continue
            self.checkpoint.track(msg.topic(), msg.partition(), msg.offset())
            self.stats.records += 1
            records.append(self._decode(msg, now_ms))
        applied = self._apply([record for record in records if record.valid])
        valid_events: list[ValidEvent] = []
        partitions: dict[str, int] = {}
        for record in records:
            items = record.applied() if record.refused else record.valid
            valid_events += items
            partitions.update((item.event.user_id, record.source.partition) for item in items)
        self.stats.events += len(valid_events)
        self.stats.applied += applied
        self.stats.batches += 1
        batch = AppliedBatch(valid_events, applied, now_ms, partitions)
        failed = self._run_stages(batch)
        dead_letters = self.publisher.delivery()
        for record in records:
            record.fail(failed)
            self._dead_letter(dead_letters, record, now_ms)
        # Dead letters must be durable before the offsets that produced them are committed.
        self.checkpoint.commit(dead_letters)
        return batch

    def _decode(self, msg: Message, now_ms: int) -> _Record:
        source = Source(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), msg.timestamp()[1])
        record = _Record(source, [], [], [])
        try:
            record.valid, record.rejected = parse_record(source.value, source.key, self.limits, now_ms)
            record.valid = [item for item in record.valid if not erasures.skipped(
                self.erased, item.event.user_id, source.topic, source.partition, source.offset)]
            # The dedupe window counts from the record's arrival on the topic (a replay brings
            # the same time back, so it decides the same way); the wall clock if the broker gave none.
            arrival_ms = source.timestamp_ms if source.timestamp_ms is not None and source.timestamp_ms >= 0 else now_ms
            record.encoded = [encode(item.event, item.ts_ms, source.offset, arrival_ms) for item in record.valid]
        except Exception as exc:  # a bug one record triggers stops that record, not the partition
            record.set_aside(exc)
        return record

    def _apply(self, records: list[_Record]) -> int:
        """Apply the records' events (one Lua call per user and source partition, one round
        trip) and note the events the store refuses; returns how many were new. When the
        apply raises for a reason other than an outage, the records are halved and each half
        applied again (in order, so every partition still goes forward), until the culprit
        records are alone and set aside; replaying what did apply changes nothing."""
        groups: dict[Group, list[list[object]]] = defaultdict(list)
        origins: dict[Group, list[tuple[_Record, int]]] = defaultdict(list)
        for record in records:
            source = f"{record.source.topic}:{record.source.partition}"
            for position, (item, encoded) in enumerate(zip(record.valid, record.encoded, strict=True)):
                group = (item.event.user_id, source)
                groups[group].append(encoded)
                origins[group].append((record, position))
        try:
            result = self.store.apply(groups)
        except Exception as exc:
            if is_outage(exc):
                raise
            if len(records) == 1:
                records[0].set_aside(exc)
                return 0
            half = len(records) // 2
            return self._apply(records[:half]) + self._apply(records[half:])
        for (group, index), reason in result.refused.items():
            record, position = origins[group][index]
            record.refuse(position, reason)
        return result.count

    def _run_stages(self, batch: AppliedBatch) -> dict[str, Rejection]:
        """Run the stages in order; returns the customers a customer stage raised for, with
        the rejection of their events. Those are left out of the later customer stages."""
        failed: dict[str, Rejection] = {}
        for stage in self.stages:
            if not isinstance(stage, CustomerStage):
                stage.run(batch)
            else:
                failed |= self._isolate(stage, batch.only(batch.users - failed.keys()) if failed else batch)
        return failed

    def _isolate(self, stage: CustomerStage, batch: AppliedBatch) -> dict[str, Rejection]:
        """Run the stage; when it raises for a reason other than an outage, halve the batch's
        customers and run each half again, until the customers it raises for are alone.
        Every stage is idempotent: what already went through is not done twice."""
        try:
            stage.run(batch)
        except Exception as exc:
            if is_outage(exc) or not batch.users:
                raise
            users = sorted(batch.users)
            if len(users) > 1:
                half = len(users) // 2
                return self._isolate(stage, batch.only(users[:half])) | self._isolate(stage, batch.only(users[half:]))
            rejection = internal_error(exc)
            log.error("%s: a customer's %d events set aside as internal_error (%s)", type(stage).__name__,
                      len(batch.events), rejection.detail, exc_info=exc)
            return {users[0]: rejection}
        return {}

    def _dead_letter(self, dead_letters: Delivery, record: _Record, now_ms: int) -> None:
        for letter in self.letters.build(record.rejected, record.source, now_ms):
            self.stats.rejected += 1
            self.stats.reasons[letter.reason] += 1
            dead_letters.send(
                self.ctx.settings.topics.dlq, key=letter.key, value=letter.value,
                headers={"tierflow.reason": letter.reason},
            )
