"""Ingest: input topics -> validation -> per-user state in Redis -> the stages.

The hot path runs on a confluent-kafka consumer in its own thread (hosted by
the Faust worker, see agents/app.py): a Faust stream moves ~8k records/s per
process, librdkafka ~170k/s, and batching is what lets Redis keep up. Per
consumer batch: validate every record, dead-letter what is invalid, apply the
rest with one Lua call per user in a single pipelined round trip, run the
stages (tiers, rewards) over what was applied, then let the checkpoint commit
the offsets once the dead letters are delivered. A crash before the commit
replays the batch; the Lua script's event-id set and per-source offset
watermark make that a no-op, and every stage is idempotent.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import KafkaError, Message

from tierflow.agents.checkpoint import Checkpoint
from tierflow.agents.clock import wall_ms
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.ingest.deadletter import dead_letter
from tierflow.pipeline.ingest.validate import Limits, ValidEvent, parse_record
from tierflow.pipeline.kafka import clients
from tierflow.pipeline.kafka.publisher import Publisher
from tierflow.pipeline.state.store import StateStore
from tierflow.pipeline.state.summary import encode

log = logging.getLogger("tierflow.ingest")


@dataclass
class AppliedBatch:
    """What one consumer batch changed, handed to the downstream stages."""

    events: list[ValidEvent]
    users: set[str]
    applied: int
    now_ms: int


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



class IngestLoop:
    def __init__(self, ctx: Context, store: StateStore, publisher: Publisher, stages: Sequence[Stage] = ()) -> None:
        self.ctx = ctx
        self.store = store
        self.publisher = publisher
        self.stages = list(stages)
        self.stats = IngestStats()
        self.limits = Limits.of(ctx.config.ingest)
        self.consumer = clients.consumer(
            ctx.settings.kafka,
            ctx.settings.group_id,
            **{
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "fetch.wait.max.ms": ctx.config.ingest.batch_max_ms,
            },
        )
        self.checkpoint = Checkpoint(self.consumer, "ingest")

    def run(self, stop: threading.Event) -> None:
        cfg = self.ctx.config.ingest
        self.consumer.subscribe(list(self.ctx.settings.topics.inputs))
        log.info("ingest consuming %s as group %s", ", ".join(self.ctx.settings.topics.inputs),
                 self.ctx.settings.group_id)
        try:
            while not stop.is_set():
                messages = self.consumer.consume(cfg.batch_max_records, cfg.batch_max_ms / 1000)
                if messages:
                    self.process(messages)
        finally:
            self.consumer.close()

    def process(self, messages: list[Message]) -> AppliedBatch:
        now_ms = wall_ms()
        groups: dict[tuple[str, str], list[list[object]]] = defaultdict(list)
        valid_events: list[ValidEvent] = []
        dead_letters = self.publisher.delivery()
        for msg in messages:
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", msg.error())
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            self.checkpoint.track(topic, partition, offset)
            self.stats.records += 1
            value, key = msg.value(), msg.key()
            valid, rejected = parse_record(value, key, self.limits, now_ms)
            source = f"{topic}:{partition}"
            for item in valid:
                groups[(item.event.user_id, source)].append(encode(item.event, item.ts_ms, offset))
            valid_events += valid
            for rejection in rejected:
                self.stats.rejected += 1
                self.stats.reasons[rejection.reason] += 1
                dead_letters.send(
                    self.ctx.settings.topics.dlq,
                    key=key,
                    value=dead_letter(
                        rejection, topic=topic, partition=partition, offset=offset, key=key,
                        value=value, timestamp_ms=msg.timestamp()[1], now_ms=now_ms,
                    ),
                    headers={"tierflow.reason": rejection.reason},
                )
        applied = self.store.apply(groups)
        self.stats.events += len(valid_events)
        self.stats.applied += applied
        self.stats.batches += 1
        batch = AppliedBatch(valid_events, {user for user, _ in groups}, applied, now_ms)
        for stage in self.stages:
            stage.run(batch)
        # Dead letters must be durable before the offsets that produced them are committed.
        self.checkpoint.commit(dead_letters)
        return batch
