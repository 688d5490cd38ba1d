"""The one place where the worker commits consumer offsets.

A checkpoint belongs to one consumer. It notes the next offset of every record
the consumer hands out; `commit()` first waits until every effect of the batch
is durable (the caller has applied state to Redis; the deliveries passed in are
the records it published: dead letters, tier changes, grants) and only then
commits. A crash anywhere before the commit replays the batch, and every
effect is idempotent, so a replay changes nothing that was already done.
"""

from __future__ import annotations

import logging

from confluent_kafka import Consumer, KafkaException, TopicPartition

from tierflow.pipeline.kafka.publisher import Delivery

log = logging.getLogger("tierflow.checkpoint")


class Checkpoint:
    def __init__(self, consumer: Consumer, name: str) -> None:
        self.consumer = consumer
        self.name = name
        self.next_offsets: dict[tuple[str, int], int] = {}

    def track(self, topic: str, partition: int, offset: int) -> None:
        self.next_offsets[(topic, partition)] = offset + 1

    def commit(self, *deliveries: Delivery) -> bool:
        """Commit what was tracked once every delivery is acknowledged (a failed one
        raises DeliveryError and nothing is committed). False when the commit was
        refused because a rebalance moved the partitions: their new owner replays."""
        for delivery in deliveries:
            delivery.wait()
        if not self.next_offsets:
            return True
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.next_offsets.items()]
        self.next_offsets = {}
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("%s: offset commit failed (%s); the batch will be replayed harmlessly", self.name, exc)
            return False
        return True
