"""Bring the local services up or down together and report where everything lives."""

from __future__ import annotations

import importlib.util
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

import redis as redis_client
from confluent_kafka import KafkaException

from tierflow.infra import kafka, redis
from tierflow.infra.errors import CredentialsRefused
from tierflow.pipeline.config.settings import Settings

Row = tuple[str, str, str]  # (service, address, state)


def up(settings: Settings, kafka_brokers: int = 1, redis_cluster: bool = False) -> list[Row]:
    """Start or reuse Kafka (`kafka_brokers` local nodes), then Redis (a local Redis Cluster
    from REDIS_URL's port on with `redis_cluster`); safe to call again (everything is then
    "reused")."""
    return [
        ("kafka", settings.kafka.bootstrap, kafka.start(settings, brokers=kafka_brokers)),
        ("redis", settings.redis_display(), redis.start_cluster(settings) if redis_cluster else redis.start(settings)),
    ]


def down(settings: Settings) -> list[Row]:
    """Stop what `up` started from this home ("stopped" / "not running"); reused or
    remote services are left alone."""
    return [
        ("redis", settings.redis_display(), redis.stop(settings)),
        ("kafka", settings.kafka.bootstrap, kafka.stop(settings)),
    ]


def status(settings: Settings) -> list[Row]:
    def state(is_up: Callable[[Settings], bool]) -> str:
        try:
            return "up" if is_up(settings) else "down"
        except CredentialsRefused:
            return "credentials refused"

    return [
        ("kafka", settings.kafka.bootstrap, state(kafka.is_up)),
        ("redis", settings.redis_display(), state(redis.is_up)),
        ("clickhouse", clickhouse_display(settings), state(_clickhouse_up)),
    ]


def explain(exc: KafkaException | redis_client.RedisError, settings: Settings) -> str:
    """One line naming the service, for a Kafka or Redis client error that reached the
    command line: that it refused the credentials (probed again, since a client only
    sees a broken connection), or else what the client said. Never a secret."""
    if isinstance(exc, redis_client.RedisError):
        service, address, is_up = "Redis", settings.redis_display(), redis.is_up
        said = str(exc)
    else:
        service, address, is_up = "Kafka", settings.kafka.bootstrap, kafka.is_up
        said = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
    try:
        is_up(settings)
    except CredentialsRefused as refused:
        return str(refused)
    return f"{service} at {address}: {said}"


def clickhouse_display(settings: Settings) -> str:
    """Where ClickHouse lives, without credentials."""
    if not settings.clickhouse_url:
        return f"embedded chDB ({settings.home / 'chdb'})"
    parts = urlsplit(settings.clickhouse_url)
    return f"{parts.scheme}://{parts.hostname}:{_clickhouse_port(settings.clickhouse_url)}"


def _clickhouse_secure(url: str) -> bool:
    # clickhouse-connect DSNs say "clickhouses" for TLS, plain URLs "https".
    return urlsplit(url).scheme in ("https", "clickhouses")


def _clickhouse_port(url: str) -> int:
    return urlsplit(url).port or (8443 if _clickhouse_secure(url) else 8123)


def _clickhouse_up(settings: Settings) -> bool:
    if not settings.clickhouse_url:
        # Embedded: "up" means the engine can be loaded in-process.
        return importlib.util.find_spec("chdb") is not None
    url = settings.clickhouse_url
    scheme = "https" if _clickhouse_secure(url) else "http"
    # /ping needs no credentials and answers "Ok." on the HTTP interface.
    ping = f"{scheme}://{urlsplit(url).hostname}:{_clickhouse_port(url)}/ping"
    try:
        with urllib.request.urlopen(ping, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False
