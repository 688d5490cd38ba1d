"""Create the pipeline's topics (idempotent) so a fresh broker just works."""

from __future__ import annotations

import os

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from tierflow.pipeline.config.settings import Settings

KEEP_FOREVER = "-1"


def admin(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka.confluent())


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create missing topics; returns the names that were created."""
    client = admin(settings)
    existing = set(client.list_topics(timeout=timeout).topics)
    replication = int(os.environ.get("TIERFLOW_REPLICATION", "1"))
    # tier.changes and reward.grants are the record of what was published and granted:
    # `tierflow rebuild` restores the ledger and the tier versions from them, so they
    # are kept for good (the input topics keep the broker's default retention).
    kept = {settings.topics.tier_changes, settings.topics.reward_grants}
    missing = [
        NewTopic(name, num_partitions=settings.partitions, replication_factor=replication,
                 config={"retention.ms": KEEP_FOREVER} if name in kept else {})
        for name in settings.topics.all
        if name not in existing
    ]
    created: list[str] = []
    for name, future in client.create_topics(missing, operation_timeout=timeout).items() if missing else []:
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # a concurrent creator won
                raise
    return created
