"""Create the pipeline's topics (idempotent) so a fresh broker just works."""

from __future__ import annotations

import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.errors import ConfigError

KEEP_FOREVER = "-1"
VISIBLE_POLL_S = 0.1  # how often to look for created topics in the metadata


def admin(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka.confluent())


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create missing topics; returns the names that were created."""
    if settings.insync_replicas > settings.replication:
        raise ConfigError(f"TIERFLOW_MIN_INSYNC_REPLICAS={settings.insync_replicas} is more than "
                          f"TIERFLOW_REPLICATION={settings.replication}: no write could succeed")
    client = admin(settings)
    existing = set(client.list_topics(timeout=timeout).topics)
    # tier.changes and reward.grants are the record of what was published and granted:
    # `tierflow rebuild` restores the ledger and the tier versions from them, so they
    # are kept for good (the input topics keep the broker's default retention).
    kept = {settings.topics.tier_changes, settings.topics.reward_grants}
    common = {"min.insync.replicas": str(settings.insync_replicas)}
    missing = [
        NewTopic(name, num_partitions=settings.partitions, replication_factor=settings.replication,
                 config=common | {"retention.ms": KEEP_FOREVER} if name in kept else common)
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
    _await_visible(client, created, settings.partitions, timeout)
    return created


def _await_visible(client: AdminClient, names: list[str], partitions: int, timeout: float) -> None:
    """A created topic reaches the metadata a moment later (longer on a busy broker): wait
    for it, so that whoever starts next finds every topic with all its partitions."""
    deadline = time.monotonic() + timeout
    while names:
        topics = client.list_topics(timeout=timeout).topics
        names = [n for n in names if n not in topics or len(topics[n].partitions) < partitions]
        if names and time.monotonic() > deadline:
            raise ConfigError(f"created topics not visible after {timeout:.0f} s: {', '.join(names)}")
        if names:
            time.sleep(VISIBLE_POLL_S)


def delete_topics(settings: Settings, holding: str, timeout: float = 30.0) -> list[str]:
    """Delete every topic whose name holds `holding` (a run's tag: its own topics, and those
    Faust or Quix Streams create, named after a consumer group that holds the tag too);
    returns their names."""
    client = admin(settings)
    names = [name for name in client.list_topics(timeout=timeout).topics if holding in name]
    for future in client.delete_topics(names, operation_timeout=timeout).values() if names else []:
        future.result()
    return names
