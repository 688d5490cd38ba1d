"""Bring the local services up or down together and report where everything lives."""

from __future__ import annotations

import importlib.util
import urllib.request
from urllib.parse import urlsplit

from tierflow.infra import kafka, redis
from tierflow.pipeline.config.settings import Settings

Row = tuple[str, str, str]  # (service, address, state)


def up(settings: Settings) -> list[Row]:
    """Start or reuse Kafka, then Redis; safe to call again (everything is then "reused")."""
    return [
        ("kafka", settings.kafka.bootstrap, kafka.start(settings)),
        ("redis", settings.redis_display(), redis.start(settings)),
    ]


def down(settings: Settings) -> list[Row]:
    """Stop what `up` started from this home ("stopped" / "not running"); reused or
    remote services are left alone."""
    return [
        ("redis", settings.redis_display(), redis.stop(settings)),
        ("kafka", settings.kafka.bootstrap, kafka.stop(settings)),
    ]


def status(settings: Settings) -> list[Row]:
    def state(ok: bool) -> str:
        return "up" if ok else "down"

    return [
        ("kafka", settings.kafka.bootstrap, state(kafka.is_up(settings))),
        ("redis", settings.redis_display(), state(redis.is_up(settings))),
        ("clickhouse", clickhouse_display(settings), state(_clickhouse_up(settings))),
    ]


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
