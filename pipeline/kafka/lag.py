"""Consumer lag of the worker's group on the input topics."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition

from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.kafka.errors import is_transient


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(self.end - self.committed, 0)


def _probe(settings: Settings) -> Consumer:
    # Never subscribes, so it does not join (or disturb) the worker's group.
    return Consumer(settings.kafka.confluent(**{"group.id": settings.group_id, "enable.auto.commit": False}))


def partitions(consumer: Consumer, topics: tuple[str, ...]) -> list[TopicPartition]:
    metadata = consumer.list_topics(timeout=10)
    return [
        TopicPartition(topic, p)
        for topic in topics
        if topic in metadata.topics
        for p in sorted(metadata.topics[topic].partitions)
    ]


# A broker that is electing leaders or loading the group coordinator (fresh topics,
# a restart) answers with retriable errors for a few seconds.
RETRIABLE_FOR_S = 30.0
RETRY_EVERY_S = 0.5


def measure(settings: Settings, end_offsets: dict[tuple[str, int], int] | None = None) -> list[PartitionLag]:
    """Lag per partition; against given end offsets, or the current ones."""
    deadline = time.monotonic() + RETRIABLE_FOR_S
    while True:
        try:
            return _measure(settings, end_offsets)
        except KafkaException as exc:
            if not is_transient(exc) or time.monotonic() > deadline:
                raise
            time.sleep(RETRY_EVERY_S)


def _measure(settings: Settings, end_offsets: dict[tuple[str, int], int] | None) -> list[PartitionLag]:
    consumer = _probe(settings)
    try:
        tps = partitions(consumer, settings.topics.inputs)
        committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=10)}
        rows = []
        for tp in tps:
            key = (tp.topic, tp.partition)
            if end_offsets is not None:
                end = end_offsets.get(key, 0)
            else:
                _low, end = consumer.get_watermark_offsets(tp, timeout=10)
            done = committed.get(key, -1)
            if done < 0:  # nothing committed yet: everything from the start is pending
                done = consumer.get_watermark_offsets(tp, timeout=10)[0]
            rows.append(PartitionLag(tp.topic, tp.partition, done, end))
        return rows
    finally:
        consumer.close()


def wait(settings: Settings, timeout: float, on_progress=None) -> list[PartitionLag]:
    """Block until everything produced before the call is processed, or raise TimeoutError."""
    snapshot = {(r.topic, r.partition): r.end for r in measure(settings)}
    deadline = time.monotonic() + timeout
    while True:
        rows = measure(settings, snapshot)
        remaining = sum(r.lag for r in rows)
        if on_progress is not None:
            on_progress(remaining)
        if remaining == 0:
            return rows
        if time.monotonic() > deadline:
            raise TimeoutError(f"{remaining} records still unprocessed after {timeout:.0f}s")
        time.sleep(0.5)
