"""Read what a topic holds between two points in time, outside any consumer group:
for the tools that look at a topic (`tierflow dlq`) rather than process it."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator

from confluent_kafka import KafkaError, Message, TopicPartition

from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.kafka import clients
from tierflow.pipeline.kafka.errors import TopicReadError

# How long one poll may wait for records the broker said are there.
POLL_S = 10.0


def read_topic(
    settings: Settings, topic: str, since_ms: int | None = None, partitions: Collection[int] | None = None
) -> Iterator[Message]:
    """Every record of `topic` (or of these of its partitions) from `since_ms` (or the start)
    up to its end at the time of the call, partition by partition in offset order."""
    # End of partition events: the last offsets of a topic written in transactions are
    # commit markers, which are never delivered.
    consumer = clients.consumer(settings.kafka, f"{settings.group_id}-reader-{uuid.uuid4().hex[:8]}",
                                **{"enable.partition.eof": True})
    try:
        metadata = consumer.list_topics(topic, timeout=POLL_S).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return
        for partition in sorted(p for p in metadata.partitions if partitions is None or p in partitions):
            low, end = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=POLL_S)
            start = low
            if since_ms is not None:
                found = consumer.offsets_for_times([TopicPartition(topic, partition, since_ms)], timeout=POLL_S)[0]
                start = found.offset if found.offset >= 0 else end
            if start >= end:
                continue
            consumer.assign([TopicPartition(topic, partition, start)])
            offset = start
            while offset < end:
                msg = consumer.poll(POLL_S)
                if msg is None:
                    raise TopicReadError(f"{topic}[{partition}] stopped answering at offset {offset} of {end}")
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        break
                    continue
                offset = msg.offset() + 1
                yield msg
    finally:
        consumer.close()


def read_record(settings: Settings, topic: str, partition: int, offset: int) -> Message | None:
    """The record at one offset, or None when retention has already removed it."""
    consumer = clients.consumer(settings.kafka, f"{settings.group_id}-reader-{uuid.uuid4().hex[:8]}")
    try:
        low, end = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=POLL_S)
        if not low <= offset < end:
            return None
        consumer.assign([TopicPartition(topic, partition, offset)])
        while True:
            msg = consumer.poll(POLL_S)
            if msg is None:
                raise TopicReadError(f"{topic}[{partition}] did not answer for offset {offset}")
            if msg.error() is None:
                return msg if msg.offset() == offset else None
    finally:
        consumer.close()
