"""librdkafka clients built from the settings: the one producer configuration
and the consumers, with the security settings applied to each."""

from __future__ import annotations

from confluent_kafka import Consumer, Producer

from tierflow.pipeline.config.settings import KafkaSettings

# Idempotent producers: a retry after a lost acknowledgement never writes a record twice.
_PRODUCER = {"enable.idempotence": True, "linger.ms": 5}
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
