"""The local Redis Cluster `tierflow up --redis-cluster` starts: three masters on
REDIS_URL's port and the two after it, every slot served, reused when up, stopped by
`tierflow down`; on private ports with their own home, so the session's cluster
(tests/fixtures/cluster.py) is left alone."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import pytest
import redis as redis_py
from redis.cluster import RedisCluster

from tierflow.infra import redis, services
from tierflow.infra.errors import ServiceError
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.state.store import connect

pytestmark = pytest.mark.service

BASE = 17100  # nodes 17100-17102, their cluster bus 27100-27102
SLOTS = 16384


def _free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def private(tmp_path: Path) -> Iterator[Settings]:
    ports = [p + bus for p in range(BASE, BASE + redis.CLUSTER_NODES) for bus in (0, 10_000)]
    if not all(_free(p) for p in ports):
        pytest.skip(f"ports {BASE}-{BASE + redis.CLUSTER_NODES - 1} (or their bus ports) are taken")
    settings = replace(Settings.from_env(), redis_url=f"redis://127.0.0.1:{BASE}/0", home=tmp_path)
    yield settings
    redis.stop(settings)


def test_up_starts_a_cluster_reuses_it_and_down_stops_it(private: Settings) -> None:
    assert services.up(private, redis_cluster=True)[1] == ("redis", f"redis://127.0.0.1:{BASE}/0", "started")
    assert services.up(private, redis_cluster=True)[1][2] == "reused"
    client = connect(private.redis_url)
    assert isinstance(client, RedisCluster)
    masters = {node.port for node in client.get_primaries()}
    assert masters == {BASE, BASE + 1, BASE + 2}
    served = sum(hi - lo + 1 for lo, hi, *_ in redis_py.Redis(port=BASE).cluster("slots"))
    assert served == SLOTS
    assert client.set("{u:1}:x", "1") and client.get("{u:1}:x") == "1"
    assert services.status(private)[1][2] == "up"

    assert redis.stop(private) == "stopped"
    assert all(_free(port) for port in masters)
    assert redis.stop(private) == "not running"
    # Started again, the nodes come back from their own cluster configuration and data.
    assert redis.start_cluster(private) == "started"
    assert connect(private.redis_url).get("{u:1}:x") == "1"


def test_the_cluster_requires_the_url_credentials(private: Settings) -> None:
    password = "p@ss " + uuid.uuid4().hex[:6]
    url = f"redis://alice:{quote(password, safe='')}@127.0.0.1:{BASE}/0"
    settings = replace(private, redis_url=url)
    assert redis.start_cluster(settings) == "started"
    assert connect(url).ping()
    with pytest.raises(redis_py.AuthenticationError):
        redis_py.Redis(port=BASE + 1).ping()
    for port in range(BASE, BASE + redis.CLUSTER_NODES):
        assert password not in (private.home / redis.CLUSTER_DIR / str(port) / "redis.conf").read_text()


def test_a_cluster_has_database_0_only(private: Settings) -> None:
    with pytest.raises(ServiceError, match="database 0 only"):
        redis.start_cluster(replace(private, redis_url=f"redis://127.0.0.1:{BASE}/3"))
