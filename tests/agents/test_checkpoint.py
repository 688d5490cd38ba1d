"""Offsets are committed only after every effect of the batch is durable."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from tierflow.agents.checkpoint import Checkpoint
from tierflow.pipeline.config.settings import KafkaSettings, Settings
from tierflow.pipeline.kafka import clients
from tierflow.pipeline.kafka.errors import DeliveryError
from tierflow.pipeline.kafka.publisher import Publisher
from tierflow.pipeline.kafka.topics import ensure_topics


def committed(consumer: Consumer, topic: str, partitions: int) -> dict[int, int]:
    tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}


def consume(consumer: Consumer, checkpoint: Checkpoint, topic: str, count: int) -> None:
    consumer.subscribe([topic])
    seen = 0
    while seen < count:
        for msg in consumer.consume(count, 10):
            if msg.error() is None:
                checkpoint.track(msg.topic(), msg.partition(), msg.offset())
                seen += 1


@pytest.fixture
def produced(settings: Settings) -> str:
    ensure_topics(settings)
    topic = settings.topics.input("browse")
    delivery = Publisher(settings.kafka, timeout_s=30).delivery()
    for i in range(20):
        delivery.send(topic, f"u{i}".encode(), b"{}")
    delivery.wait()
    return topic


def test_a_failed_delivery_commits_nothing_and_a_durable_one_commits_all(settings: Settings, produced: str) -> None:
    consumer = clients.consumer(settings.kafka, f"cp-{uuid.uuid4().hex[:6]}", **{"auto.offset.reset": "earliest"})
    try:
        checkpoint = Checkpoint(consumer, "test")
        consume(consumer, checkpoint, produced, 20)
        lost = Publisher(KafkaSettings(bootstrap="127.0.0.1:1"), timeout_s=1).delivery()
        lost.send(settings.topics.dlq, b"k", b"dead letter")
        with pytest.raises(DeliveryError):
            checkpoint.commit(lost)
        assert committed(consumer, produced, settings.partitions) == {}

        durable = Publisher(settings.kafka, timeout_s=30).delivery()
        durable.send(settings.topics.dlq, b"k", b"dead letter")
        assert checkpoint.commit(durable)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(produced, p), timeout=10)[1]
                for p in range(settings.partitions)}
        assert committed(consumer, produced, settings.partitions) == {p: end for p, end in ends.items() if end > 0}
    finally:
        consumer.close()
