"""librdkafka clients built from the settings: the one producer configuration
and the consumers, with the security settings applied to each."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer

from tierflow.pipeline.config.settings import KafkaSettings

# Idempotent producers: a retry after a lost acknowledgement never writes a record twice.
_PRODUCER = {"enable.idempotence": True, "linger.ms": 5}
# How long one poll of a leaving consumer waits for the group's answer.
_LEAVE_POLL_S = 0.1
# Bulk sending (`tierflow produce`, the demo, benchmarks) trades a little latency for throughput.
_BULK = {"linger.ms": 20, "compression.type": "lz4", "batch.size": 1_000_000}


def producer(kafka: KafkaSettings, *, bulk: bool = False, transactional_id: str | None = None) -> Producer:
    """`transactional_id`: a transactional producer, which fences every earlier one of
    the same id once it calls init_transactions (agents/outputs.py)."""
    conf = _PRODUCER | _BULK if bulk else _PRODUCER
    if transactional_id is not None:
        conf = conf | {"transactional.id": transactional_id}
    return Producer(kafka.confluent(**conf))


def consumer(kafka: KafkaSettings, group_id: str, **overrides: object) -> Consumer:
    """A consumer that never commits on its own: callers commit what they have made durable."""
    return Consumer(kafka.confluent(**{"group.id": group_id, "enable.auto.commit": False, **overrides}))


def close_subscribed(consumer: Consumer, wait_s: float) -> None:
    """Closes a consumer that subscribed to a group, leaving the group first.

    librdkafka can hang for good when a rebalance reaches a consumer while it closes
    (librdkafka issue 4884): confluent-kafka's rebalance callback then waits in assign
    with the GIL held, and no thread of the process runs again, the shutdown deadline's
    included. Unsubscribing first and polling up to `wait_s` until nothing is assigned
    serves that rebalance in an ordinary poll; what the poll returns is dropped (it was
    never committed, so the group's next member reads it)."""
    consumer.unsubscribe()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        consumer.poll(min(_LEAVE_POLL_S, wait_s))
        if not consumer.assignment():
            break
    consumer.close()
