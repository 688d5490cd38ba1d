"""Topics are created once, with the retention `tierflow rebuild` relies on."""

from __future__ import annotations

from confluent_kafka.admin import ConfigResource

from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.kafka.topics import admin, ensure_topics


def retention_ms(settings: Settings, topic: str) -> str:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    client = admin(settings)  # kept alive until the answer is in
    configs = client.describe_configs([resource])[resource].result(timeout=30)
    return configs["retention.ms"].value


def test_outputs_are_kept_for_good_and_creation_is_idempotent(settings: Settings) -> None:
    assert sorted(ensure_topics(settings)) == sorted(settings.topics.all)
    assert ensure_topics(settings) == []
    assert retention_ms(settings, settings.topics.tier_changes) == "-1"
    assert retention_ms(settings, settings.topics.reward_grants) == "-1"
    assert retention_ms(settings, settings.topics.input("purchase")) != "-1"
