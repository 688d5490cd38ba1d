"""Ingest: input topics -> validation -> per-user state in Redis.

The hot path runs on a confluent-kafka consumer in its own thread (hosted by
the Faust worker, see agents/app.py): a Faust stream moves ~8k records/s per
process, librdkafka ~170k/s, and batching is what lets Redis keep up. Per
consumer batch: validate every record, dead-letter what is invalid, apply the
rest with one Lua call per user in a single pipelined round trip, then commit
the offsets. A crash between apply and commit replays the batch; the Lua
script's event-id set and per-source offset watermark make that a no-op.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from tierflow.pipeline.config.context import Context
from tierflow.pipeline.ingest.deadletter import dead_letter
from tierflow.pipeline.ingest.validate import Limits, ValidEvent, parse_record
from tierflow.pipeline.state.store import StateStore, connect
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


BatchHook = Callable[[AppliedBatch], None]



class IngestLoop:
    def __init__(self, ctx: Context, hooks: Sequence[BatchHook] = ()) -> None:
        self.ctx = ctx
        self.hooks = list(hooks)
        self.stats = IngestStats()
        self.limits = Limits.of(ctx.config)
        self.store = StateStore(connect(ctx.settings.redis_url), ctx.config.state.retention_days)
        kafka = ctx.settings.kafka
        self.consumer = Consumer(
            kafka.confluent(
                **{
                    "group.id": ctx.settings.group_id,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "partition.assignment.strategy": "cooperative-sticky",
                    "fetch.wait.max.ms": ctx.config.ingest.batch_max_ms,
                }
            )
        )
        self.dlq = Producer(kafka.confluent(**{"enable.idempotence": True, "linger.ms": 5}))

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
            self.dlq.flush(10)

    def process(self, messages: list[Message]) -> AppliedBatch:
        now_ms = int(time.time() * 1000)
        groups: dict[tuple[str, str], list[list[object]]] = defaultdict(list)
        valid_events: list[ValidEvent] = []
        next_offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", msg.error())
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            next_offsets[(topic, partition)] = offset + 1
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
                self.dlq.produce(
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
        for hook in self.hooks:
            hook(batch)
        # Dead letters must be durable before the offsets that produced them are committed.
        if self.dlq.flush(30) != 0:
            raise RuntimeError("dead-letter records were not delivered; not committing offsets")
        if next_offsets:
            try:
                self.consumer.commit(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in next_offsets.items()],
                    asynchronous=False,
                )
            except KafkaException as exc:
                # Lost the partition in a rebalance: its new owner replays, which is a no-op.
                log.warning("offset commit failed (%s); the batch will be replayed harmlessly", exc)
        return batch
