"""Consumer groups through the Kafka admin API: who is in a group right now, and
moving a group's committed offsets while nobody is (`tierflow rebuild`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from tierflow.pipeline.config.settings import KafkaSettings
from tierflow.pipeline.errors import TierflowError

# How long one admin request may take before it is an error.
REQUEST_TIMEOUT_S = 15.0


class GroupError(TierflowError, RuntimeError):
    """The broker refused or did not answer a group request."""


def _admin(kafka: KafkaSettings) -> AdminClient:
    return AdminClient(kafka.confluent())


def members(kafka: KafkaSettings, groups: Iterable[str]) -> dict[str, list[str]]:
    """Per group with members, each member as "client-id on host"."""
    found: dict[str, list[str]] = {}
    admin = _admin(kafka)  # alive until every answer is in: its futures resolve on its thread
    futures = admin.describe_consumer_groups(list(groups), request_timeout=REQUEST_TIMEOUT_S)
    for group, future in futures.items():
        try:
            description = future.result()
        except KafkaException as exc:
            raise GroupError(f"cannot describe consumer group {group}: {exc.args[0].str()}") from None
        if description.members:
            found[group] = [f"{m.client_id} on {m.host.lstrip('/')}" for m in description.members]
    return found


def earliest(kafka: KafkaSettings, topics: Sequence[str]) -> dict[TopicPartition, int]:
    """The first retained offset of every partition of these (existing) topics."""
    admin = _admin(kafka)
    metadata = admin.list_topics(timeout=REQUEST_TIMEOUT_S).topics
    wanted = {TopicPartition(t, p): OffsetSpec.earliest() for t in topics if t in metadata
              for p in metadata[t].partitions}
    if not wanted:
        return {}
    offsets = {}
    for tp, future in admin.list_offsets(wanted, request_timeout=REQUEST_TIMEOUT_S).items():
        try:
            offsets[TopicPartition(tp.topic, tp.partition)] = future.result().offset
        except KafkaException as exc:
            where = f"{tp.topic}[{tp.partition}]"
            raise GroupError(f"cannot read the first offset of {where}: {exc.args[0].str()}") from None
    return offsets


def commit_offsets(kafka: KafkaSettings, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Set the group's committed offsets (the broker refuses while the group has members)."""
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(tp.topic, tp.partition, o)
                                                   for tp, o in offsets.items()])
    admin = _admin(kafka)
    futures = admin.alter_consumer_group_offsets([request], request_timeout=REQUEST_TIMEOUT_S)
    for future in futures.values():
        try:
            result = future.result()
        except KafkaException as exc:
            raise GroupError(f"cannot move the offsets of consumer group {group}: {exc.args[0].str()}") from None
        failed = [tp for tp in result.topic_partitions if tp.error is not None]
        if failed:
            raise GroupError(f"cannot move the offsets of consumer group {group}: "
                             f"{failed[0].topic}[{failed[0].partition}]: {failed[0].error.str()}")
