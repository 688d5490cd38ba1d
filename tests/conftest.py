"""Shared fixtures: real services started by the project's own infra code.

Tests never mock Kafka, Redis or ClickHouse. Each test gets an empty Redis
database and, where it needs Kafka, topics under a unique prefix, so tests
neither see each other's data nor depend on order.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from tierflow.pipeline.config.settings import Settings, Topics

# Parallel local runs may point different sessions at different databases.
TEST_REDIS_DB = int(os.environ.get("TIERFLOW_TEST_REDIS_DB", "1"))


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    """Settings from the environment with Redis pointed at the test database."""
    settings = Settings.from_env()
    url = settings.redis_url.rsplit("/", 1)[0] + f"/{TEST_REDIS_DB}"
    return replace(settings, redis_url=url)


@pytest.fixture(scope="session")
def services(base_settings: Settings) -> Settings:
    """Kafka and Redis up (started, or reused when already answering)."""
    from tierflow.infra.services import up

    up(base_settings)
    return base_settings


@pytest.fixture
def redis_url(services: Settings) -> Iterator[str]:
    client = redis.Redis.from_url(services.redis_url)
    client.flushdb()
    yield services.redis_url
    client.close()


@pytest.fixture
def settings(services: Settings, redis_url: str) -> Settings:
    """Settings for one test: its own topic prefix and consumer group, an empty Redis db."""
    tag = uuid.uuid4().hex[:8]
    return replace(
        services,
        redis_url=redis_url,
        topics=Topics(prefix=f"t{tag}."),
        group_id=f"tierflow-test-{tag}",
        partitions=4,
    )
