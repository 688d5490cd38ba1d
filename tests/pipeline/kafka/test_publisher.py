"""The publisher reports a delivery only when the broker has every record."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import TopicPartition

from tierflow.pipeline.config.settings import KafkaSettings, Settings
from tierflow.pipeline.kafka import clients
from tierflow.pipeline.kafka.errors import DeliveryError
from tierflow.pipeline.kafka.publisher import Publisher
from tierflow.pipeline.kafka.topics import ensure_topics

UNREACHABLE = KafkaSettings(bootstrap="127.0.0.1:1")


def read_all(settings: Settings, topic: str, expected: int) -> list[tuple[bytes, bytes]]:
    consumer = clients.consumer(settings.kafka, f"read-{uuid.uuid4().hex[:6]}")
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
        got: list[tuple[bytes, bytes]] = []
        while len(got) < expected:
            msg = consumer.poll(10)
            assert msg is not None, f"only {len(got)} of {expected} records arrived"
            if msg.error() is None:
                got.append((msg.key(), msg.value()))
        return got
    finally:
        consumer.close()


def test_a_delivery_waits_until_every_record_is_on_the_topic(settings: Settings) -> None:
    ensure_topics(settings)
    topic = settings.topics.dlq
    publisher = Publisher(settings.kafka, timeout_s=30)
    delivery = publisher.delivery()
    for i in range(100):
        delivery.send(topic, f"u{i}".encode(), f"v{i}".encode(), headers={"tierflow.reason": "test"})
    assert delivery.wait() == 100
    assert sorted(read_all(settings, topic, 100)) == sorted((f"u{i}".encode(), f"v{i}".encode()) for i in range(100))


def test_an_unreachable_broker_fails_the_delivery_instead_of_passing_silently(settings: Settings) -> None:
    publisher = Publisher(UNREACHABLE, timeout_s=1)
    delivery = publisher.delivery()
    delivery.send("anything", b"k", b"v")
    with pytest.raises(DeliveryError, match="1 of 1 records not delivered"):
        delivery.wait()


def test_each_delivery_answers_for_its_own_records_only(settings: Settings) -> None:
    ensure_topics(settings)
    publisher = Publisher(settings.kafka, timeout_s=30)
    empty = publisher.delivery()
    full = publisher.delivery()
    full.send(settings.topics.dlq, b"k", b"v")
    assert empty.wait() == 0
    assert full.wait() == 1
