"""The one way the worker writes to Kafka.

A `Delivery` groups the records one piece of work sends (the dead letters of a
batch, a round of tier changes, a page of reward grants) and `wait()` returns
only when every one of them is acknowledged by the broker, else raises
`DeliveryError`. Callers acknowledge outboxes and commit offsets after
`wait()`, so nothing counts as done before it is durable. Several deliveries
may share the process's one producer, from several threads: each tracks its
own records.
"""

from __future__ import annotations

import threading

from confluent_kafka import KafkaError, Message, Producer

from tierflow.pipeline.config.settings import KafkaSettings
from tierflow.pipeline.kafka import clients
from tierflow.pipeline.kafka.errors import DeliveryError

# Failures kept for the error message; the count is always exact.
_SHOWN_FAILURES = 3


class Delivery:
    def __init__(self, producer: Producer, timeout_s: float) -> None:
        self._producer = producer
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self.sent = 0
        self.acked = 0
        self.failures: list[str] = []
        # (topic, partition) -> the offset after the last record acknowledged there.
        self.ends: dict[tuple[str, int], int] = {}

    def send(self, topic: str, key: bytes | None, value: bytes, headers: dict[str, str] | None = None,
             partition: int | None = None) -> None:
        """To `partition` if given, else where the producer's partitioner puts `key`."""
        where = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, headers=headers, on_delivery=self._on_delivery,
                                       **where)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.1)
        self.sent += 1

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            if err is None:
                self.acked += 1
                where = (msg.topic(), msg.partition())
                self.ends[where] = max(self.ends.get(where, 0), msg.offset() + 1)
            else:
                self.failures.append(str(err))

    def wait(self) -> int:
        """Block until every record sent is acknowledged; returns how many were sent."""
        if self.sent:
            self._producer.flush(self._timeout_s)
        with self._lock:
            if self.failures or self.acked < self.sent:
                shown = self.failures[:_SHOWN_FAILURES]
                raise DeliveryError(f"{self.sent - self.acked} of {self.sent} records not delivered: {shown}")
        return self.sent


class Publisher:
    """The worker's producer (idempotent, thread-safe), handing out deliveries."""

    def __init__(self, kafka: KafkaSettings, timeout_s: float) -> None:
        self._producer = clients.producer(kafka)
        self._timeout_s = timeout_s

    def delivery(self) -> Delivery:
        return Delivery(self._producer, self._timeout_s)

    def close(self) -> None:
        self._producer.flush(self._timeout_s)
