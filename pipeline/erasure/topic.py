"""The erasure list on Kafka: the compacted topic `tierflow.erasures` (key: the user id),
which keeps the latest erasure of every customer for good.

An erasure's marks are the end offsets of the topics that hold the customer's records
(the inputs, tier.changes, reward.grants) at the time of the erasure: what lies below a
mark is the erased customer's, what comes after is a new customer's.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.kafka import clients
from tierflow.pipeline.kafka.groups import REQUEST_TIMEOUT_S
from tierflow.pipeline.kafka.publisher import Publisher
from tierflow.pipeline.kafka.reader import read_topic
from tierflow.pipeline.kafka.topics import admin
from tierflow.schemas import erasures
from tierflow.schemas.erasures import Erasure

# Compaction keeps the newest record per key for good: the list never loses an erasure.
COMPACTED = {"cleanup.policy": "compact"}


def marked_topics(settings: Settings) -> tuple[str, ...]:
    """The topics whose records carry customers' data and are read again later."""
    topics = settings.topics
    return (*topics.inputs, topics.tier_changes, topics.reward_grants)


def watermarks(settings: Settings, topics: Sequence[str]) -> dict[tuple[str, int], tuple[int, int]]:
    """(first retained, end) offsets of every partition of these topics that exist."""
    probe = clients.consumer(settings.kafka, f"{settings.group_id}-probe-{uuid.uuid4().hex[:8]}")
    try:
        metadata = probe.list_topics(timeout=REQUEST_TIMEOUT_S).topics
        return {(topic, p): probe.get_watermark_offsets(TopicPartition(topic, p), timeout=REQUEST_TIMEOUT_S)
                for topic in topics if topic in metadata for p in metadata[topic].partitions}
    finally:
        probe.close()


def ensure_topic(settings: Settings) -> None:
    """Create the compacted erasure topic unless it exists (idempotent)."""
    client = admin(settings)
    name = settings.topics.erasures
    if name in client.list_topics(timeout=REQUEST_TIMEOUT_S).topics:
        return
    config = COMPACTED | {"min.insync.replicas": str(settings.insync_replicas)}
    topic = NewTopic(name, num_partitions=settings.partitions, replication_factor=settings.replication, config=config)
    try:
        client.create_topics([topic], operation_timeout=REQUEST_TIMEOUT_S)[name].result()
    except KafkaException as exc:
        if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # a concurrent creator won
            raise


def new_erasure(settings: Settings, user_id: str, now_ms: int) -> Erasure:
    """The erasure of `user_id` now, marked at the current ends of the customer-data topics."""
    ends = watermarks(settings, marked_topics(settings))
    erased_at = datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return Erasure(user_id=user_id, erasure_id=uuid.uuid4().hex, erased_at=erased_at,
                   marks={f"{topic}:{partition}": high for (topic, partition), (_low, high) in ends.items()})


def publish(settings: Settings, record: Erasure, timeout_s: float) -> None:
    """Write the record and wait until the broker acknowledges it (DeliveryError otherwise)."""
    ensure_topic(settings)
    publisher = Publisher(settings.kafka, timeout_s)
    try:
        delivery = publisher.delivery()
        delivery.send(settings.topics.erasures, key=record.user_id.encode(), value=erasures.encode(record))
        delivery.wait()
    finally:
        publisher.close()


def load(settings: Settings) -> dict[str, Erasure]:
    """The latest erasure of every erased customer (an empty list before the first)."""
    found: dict[str, Erasure] = {}
    for msg in read_topic(settings, settings.topics.erasures):
        value = msg.value()
        if value is None:  # a tombstone written by hand: that customer is no longer listed
            found.pop(msg.key().decode(), None)
            continue
        record = erasures.decode(value)
        found[record.user_id] = record
    return found


def skipped(listed: Mapping[str, Erasure], user_id: str, topic: str, partition: int, offset: int) -> bool:
    """Whether a record of `user_id` at this offset belongs to an erased customer."""
    erasure = listed.get(user_id)
    return erasure is not None and erasure.skips(topic, partition, offset)
