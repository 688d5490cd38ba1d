"""Errors of the Kafka clients."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from tierflow.pipeline.errors import TierflowError


class DeliveryError(TierflowError):
    """Records were not acknowledged by the broker: whatever they stand for is not durable."""


# What a healthy cluster answers for a few seconds while it elects leaders or
# loads a group coordinator (fresh topics, a broker restart).
_TRANSIENT = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
})


def is_transient(exc: KafkaException) -> bool:
    err = exc.args[0]
    return isinstance(err, KafkaError) and (err.retriable() or err.code() in _TRANSIENT)


class TopicReadError(TierflowError):
    """A topic could not be read to the end the broker reported."""
