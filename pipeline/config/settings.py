"""Runtime settings: where services live and how to reach them.

Everything comes from environment variables with local defaults, so the same
code runs on a laptop (`tierflow up`) and against managed Kafka/Redis/ClickHouse.
Domain rules (windows, RFM tables, tiers, rewards) live in the TOML config
(`pipeline.config`), not here.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tierflow.pipeline.errors import ConfigError

INPUT_TYPES = ("browse", "cart", "purchase", "interaction")
LOG_FORMATS = ("text", "json")
KAFKA_LOG = logging.getLogger("tierflow.kafka")
# Kafka allows more, but a topic per input type with more partitions than this is a typo.
MAX_PARTITIONS = 10_000
MAX_PORT = 65_535
MAX_REPLICAS = 16


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _int_env(name: str, default: int, lowest: int, highest: int) -> int:
    """An integer variable; a bad value is an error that names the variable."""
    text = _env(name, str(default))
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not an integer") from None
    if not lowest <= value <= highest:
        raise ConfigError(f"{name}={value} is outside {lowest}..{highest}")
    return value


def _choice_env(name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of `choices`; a bad value is an error that names the variable."""
    value = _env(name, default).lower()
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_location: str | None = None

    @classmethod
    def from_env(cls) -> KafkaSettings:
        protocol = _env("KAFKA_SECURITY_PROTOCOL", cls.security_protocol).upper()
        # librdkafka would pick GSSAPI: over SASL, a user name means PLAIN unless told.
        plain = "PLAIN" if protocol.startswith("SASL") and os.environ.get("KAFKA_SASL_USERNAME") else None
        return cls(
            bootstrap=_env("KAFKA_BOOTSTRAP", cls.bootstrap),
            security_protocol=protocol,
            sasl_mechanism=os.environ.get("KAFKA_SASL_MECHANISM") or plain,
            sasl_username=os.environ.get("KAFKA_SASL_USERNAME") or None,
            sasl_password=os.environ.get("KAFKA_SASL_PASSWORD") or None,
            ssl_ca_location=os.environ.get("KAFKA_SSL_CA_LOCATION") or None,
        )

    @property
    def is_local(self) -> bool:
        hosts = [part.rsplit(":", 1)[0] for part in self.bootstrap.split(",")]
        return all(h in ("127.0.0.1", "localhost", "::1", "[::1]") for h in hosts)

    def confluent(self, **extra: object) -> dict[str, object]:
        """librdkafka configuration, security settings included."""
        conf: dict[str, object] = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol,
            # librdkafka's own messages go to Python logging (the worker's log), not
            # straight to stderr, where they would bury the CLI's one-line errors.
            "logger": KAFKA_LOG,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        conf.update(extra)
        return conf


# A namespace may not hold braces (they would move the keys' hash tags) nor glob characters.
_NAMESPACE = re.compile(r"[A-Za-z0-9._:-]*")


def redis_namespace_from_env() -> str:
    """TIERFLOW_REDIS_NAMESPACE when set (even empty), else the topic prefix: with no
    prefix, no namespace, so the keys of a deployment that had none stay where they were."""
    namespace = os.environ.get("TIERFLOW_REDIS_NAMESPACE", os.environ.get("TIERFLOW_TOPIC_PREFIX", ""))
    if not _NAMESPACE.fullmatch(namespace):
        raise ConfigError(f"TIERFLOW_REDIS_NAMESPACE={namespace!r}: letters, digits, '.', '_', ':' and '-' only"
                          " (the topic prefix is the default)")
    return namespace


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    def input(self, event_type: str) -> str:
        return self.name(f"touch.{event_type}")

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.input(t) for t in INPUT_TYPES)

    @property
    def dlq(self) -> str:
        return self.name("touch.dlq")

    @property
    def tier_changes(self) -> str:
        return self.name("tier.changes")

    @property
    def reward_grants(self) -> str:
        return self.name("reward.grants")

    @property
    def erasures(self) -> str:
        """Compacted, created by `tierflow forget` (pipeline/erasure/topic.py)."""
        return self.name("tierflow.erasures")

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.inputs, self.dlq, self.tier_changes, self.reward_grants)


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    # URLs may carry passwords: kept out of repr(), which ends up in logs and tracebacks.
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    clickhouse_url: str | None = field(default=None, repr=False)
    home: Path = field(default_factory=lambda: Path.home() / ".tierflow")
    config_path: Path | None = None
    topics: Topics = field(default_factory=Topics)
    partitions: int = 4
    # Replicas of every topic tierflow creates (Faust's own included); 3 on a production
    # cluster. min.insync.replicas defaults to a majority so acks=all survives one broker.
    replication: int = 1
    min_insync_replicas: int | None = None
    group_id: str = "tierflow"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    dashboard_token: str | None = field(default=None, repr=False)
    # "wall", or "event": time is the newest event time seen (backfills, tests).
    clock: str = "wall"
    # The worker's log lines: "text" for people, "json" (one object per line) for machines.
    log_format: str = "text"
    # Prepended to every Redis key, so deployments sharing a Redis never meet (pipeline/keyspace.py).
    redis_namespace: str = ""

    @classmethod
    def from_env(cls) -> Settings:
        config = os.environ.get("TIERFLOW_CONFIG") or None
        return cls(
            kafka=KafkaSettings.from_env(),
            redis_url=_env("REDIS_URL", cls.redis_url),
            clickhouse_url=os.environ.get("CLICKHOUSE_URL") or None,
            home=Path(_env("TIERFLOW_HOME", str(Path.home() / ".tierflow"))).expanduser(),
            config_path=Path(config).expanduser() if config else None,
            topics=Topics(prefix=os.environ.get("TIERFLOW_TOPIC_PREFIX", "")),
            partitions=_int_env("TIERFLOW_PARTITIONS", cls.partitions, 1, MAX_PARTITIONS),
            replication=_int_env("TIERFLOW_REPLICATION", cls.replication, 1, MAX_REPLICAS),
            min_insync_replicas=(_int_env("TIERFLOW_MIN_INSYNC_REPLICAS", 1, 1, MAX_REPLICAS)
                                 if _env("TIERFLOW_MIN_INSYNC_REPLICAS", "") else None),
            group_id=_env("TIERFLOW_GROUP", cls.group_id),
            web_host=_env("TIERFLOW_WEB_HOST", cls.web_host),
            web_port=_int_env("TIERFLOW_WEB_PORT", cls.web_port, 0, MAX_PORT),
            dashboard_token=os.environ.get("TIERFLOW_DASHBOARD_TOKEN") or None,
            clock=_env("TIERFLOW_CLOCK", cls.clock),
            log_format=_choice_env("TIERFLOW_LOG_FORMAT", cls.log_format, LOG_FORMATS),
            redis_namespace=redis_namespace_from_env(),
        )

    @property
    def insync_replicas(self) -> int:
        """min.insync.replicas of the topics tierflow creates: as set, else a majority."""
        return self.min_insync_replicas or self.replication // 2 + 1

    @property
    def redis_is_local(self) -> bool:
        host = urlsplit(self.redis_url).hostname or ""
        return host in ("127.0.0.1", "localhost", "::1")

    def redis_display(self) -> str:
        """The Redis address without credentials, for logs and status lines."""
        parts = urlsplit(self.redis_url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
