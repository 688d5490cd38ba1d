"""infra against real services: the shared Kafka and Redis that later test modules use
(127.0.0.1:9092 and :6379 unless the environment says otherwise) are started or reused
and left running; stop/start is only exercised on private ports with their own home."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import pytest
import redis as redis_py
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.fixtures.worker import free_port
from tierflow.infra import kafka, redis, services
from tierflow.infra.errors import CredentialsRefused
from tierflow.pipeline.config.settings import KafkaSettings, Settings

# Every test here starts, stops or talks to the local services.
pytestmark = pytest.mark.service

SHARED = Settings.from_env()  # what tests/conftest.py brings up too


@pytest.fixture(scope="module")
def shared() -> Settings:
    services.up(SHARED)
    return SHARED


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_up_starts_or_reuses_then_reports_reused() -> None:
    first = services.up(SHARED)
    assert [(name, state in ("started", "reused")) for name, _, state in first] == [
        ("kafka", True),
        ("redis", True),
    ]
    second = services.up(SHARED)
    assert second == [
        ("kafka", SHARED.kafka.bootstrap, "reused"),
        ("redis", SHARED.redis_display(), "reused"),
    ]


def test_status_shows_services_up(shared: Settings) -> None:
    assert services.status(shared)[:2] == [
        ("kafka", shared.kafka.bootstrap, "up"),
        ("redis", shared.redis_display(), "up"),
    ]


def test_status_embedded_clickhouse(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, clickhouse_url=None)
    assert services.status(settings)[2] == (
        "clickhouse",
        f"embedded chDB ({tmp_path / 'chdb'})",
        "up",
    )


def test_status_hides_credentials() -> None:
    settings = Settings(
        redis_url="redis://user:s3cret@127.0.0.2:19099/2",
        clickhouse_url="http://user:s3cret@127.0.0.2:19098/db",
    )
    rows = services.status(settings)
    assert ("redis", "redis://127.0.0.2:19099/2", "down") in rows
    assert ("clickhouse", "http://127.0.0.2:19098", "down") in rows
    assert "s3cret" not in repr(rows)


def test_ensure_jars_is_cached(shared: Settings) -> None:
    started = time.monotonic()
    libs = kafka.ensure_jars(shared.home)
    assert time.monotonic() - started < 0.5
    assert (libs / f"kafka_2.13-{kafka.KAFKA_VERSION}.jar").exists()


def round_trip(settings: Settings) -> None:
    """Create a topic, produce a record and consume it back with these settings."""
    topic = f"test.infra.{uuid.uuid4().hex[:12]}"
    admin = AdminClient(settings.kafka.confluent())
    # Auto-creation is off on our broker, so the topic has to be made explicitly.
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(
        timeout=30
    )
    try:
        producer = Producer(settings.kafka.confluent())
        producer.produce(topic, key=b"k", value=b"hello")
        assert producer.flush(10) == 0
        consumer = Consumer(
            settings.kafka.confluent(
                **{
                    "group.id": f"test-infra-{uuid.uuid4().hex[:8]}",
                    "auto.offset.reset": "earliest",
                }
            )
        )
        consumer.subscribe([topic])
        try:
            deadline = time.monotonic() + 60
            message = None
            while message is None and time.monotonic() < deadline:
                message = consumer.poll(1.0)
            assert message is not None, "no message consumed within 60 s"
            assert message.error() is None
            assert (message.key(), message.value()) == (b"k", b"hello")
        finally:
            consumer.close()
    finally:
        admin.delete_topics([topic])[topic].result(timeout=30)


def test_kafka_produce_consume_round_trip(shared: Settings) -> None:
    round_trip(shared)


def test_kafka_sasl_plain_round_trip_and_refused_credentials(secured: Settings) -> None:
    # The broker `up` started listens with SASL_PLAINTEXT/PLAIN only.
    round_trip(secured)
    password = secured.kafka.sasl_password or ""
    wrong = replace(secured, kafka=replace(secured.kafka, sasl_password="not-the-password"))
    with pytest.raises(CredentialsRefused, match=r"^Kafka at 127\.0\.0\.1:\d+ refused the credentials"):
        kafka.is_up(wrong)
    assert services.status(wrong)[0] == ("kafka", secured.kafka.bootstrap, "credentials refused")
    with pytest.raises(CredentialsRefused):
        services.up(wrong)  # never a second broker on the same port
    # A client without SASL gets nothing at all.
    assert not kafka.is_up(replace(secured, kafka=KafkaSettings(bootstrap=secured.kafka.bootstrap)))
    # The password is on disk in the broker's configuration only, readable by its owner.
    root = secured.home / "kafka"
    assert (root / "server.properties").stat().st_mode & 0o777 == 0o600
    assert password in (root / "server.properties").read_text()
    assert password not in (root / "kafka.log").read_text()


@pytest.mark.parametrize("user", ["alice", None])
def test_local_redis_requires_the_url_credentials(tmp_path: Path, user: str | None) -> None:
    port = free_port()
    password = "p@ss w0rd/" + uuid.uuid4().hex[:6]  # URL-quoted below, as REDIS_URL must be
    url = f"redis://{user or ''}:{quote(password, safe='')}@127.0.0.1:{port}/0"
    settings = Settings(redis_url=url, home=tmp_path)
    assert redis.start(settings) == "started"
    try:
        assert redis_py.Redis.from_url(url).ping() is True
        for refused in (f"redis://127.0.0.1:{port}/0", url.replace(quote(password, safe=""), "wrong")):
            with pytest.raises(redis_py.AuthenticationError):
                redis_py.Redis.from_url(refused).ping()
            other = replace(settings, redis_url=refused)
            with pytest.raises(CredentialsRefused, match=f"^Redis at redis://127.0.0.1:{port}/0 refused"):
                redis.start(other)
            assert services.status(other)[1][2] == "credentials refused"
        conf = tmp_path / "redis" / "redis.conf"
        assert conf.stat().st_mode & 0o777 == 0o600
        assert password not in conf.read_text()  # its SHA-256 only
        assert password not in (tmp_path / "redis" / "redis.log").read_text()
    finally:
        assert redis.stop(settings) == "stopped"


def test_redis_ping(shared: Settings) -> None:
    assert redis_py.Redis.from_url(shared.redis_url).ping() is True


def test_remote_services_are_never_started() -> None:
    # 127.0.0.2 is loopback to the kernel but not "local" to the settings: it stands in
    # for a managed service, which must only be checked, never started.
    settings = Settings(
        kafka=KafkaSettings(bootstrap="127.0.0.2:19097"), redis_url="redis://127.0.0.2:19099/0"
    )
    with pytest.raises(RuntimeError, match="not reachable"):
        services.up(settings)


@pytest.fixture
def private(tmp_path: Path) -> Iterator[Settings]:
    if not (_port_free(19092) and _port_free(19093) and _port_free(16379)):
        pytest.skip("ports 19092/19093/16379 are taken")
    # Share the jar cache with the default home instead of copying 45 MB again.
    (tmp_path / "cache").symlink_to(kafka.ensure_jars(SHARED.home).parents[1])
    settings = Settings(
        kafka=KafkaSettings(bootstrap="127.0.0.1:19092"),
        redis_url="redis://127.0.0.1:16379/0",
        home=tmp_path,
    )
    yield settings
    services.down(settings)


def test_up_down_on_private_ports(private: Settings) -> None:
    assert services.up(private) == [
        ("kafka", "127.0.0.1:19092", "started"),
        ("redis", "redis://127.0.0.1:16379/0", "started"),
    ]
    assert [state for _, _, state in services.up(private)] == ["reused", "reused"]
    assert (private.home / "kafka" / "data" / "meta.properties").exists()

    assert services.down(private) == [
        ("redis", "redis://127.0.0.1:16379/0", "stopped"),
        ("kafka", "127.0.0.1:19092", "stopped"),
    ]
    assert [state for _, _, state in services.status(private)[:2]] == ["down", "down"]
    assert [state for _, _, state in services.down(private)] == ["not running", "not running"]

    # A second start reuses the formatted storage and the Redis append-only file.
    assert [state for _, _, state in services.up(private)] == ["started", "started"]
    assert (private.home / "redis" / "appendonlydir").is_dir()
