"""Two deployments (two topic prefixes) on one Redis, and on one Redis Cluster: each
spends its own budget and holds its own wallets, since every key carries the
deployment's namespace, by default its topic prefix."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from tests.fixtures.paths import ROOT
from tests.fixtures.worker import env_for
from tierflow.pipeline.config.settings import Settings, Topics
from tierflow.pipeline.state.store import connect

POOL = 2  # NEW666 coupons per deployment, so the third claim of one deployment finds none


def tierflow(settings: Settings, config: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI of the deployment with `settings`' topic prefix, its namespace left to the default."""
    env = env_for(replace(settings, config_path=config))
    del env["TIERFLOW_REDIS_NAMESPACE"]
    return subprocess.run([sys.executable, "-m", "tierflow.pipeline.cli.main", *args],
                          env=env, cwd=ROOT, capture_output=True, timeout=120)


@pytest.mark.parametrize("redis", ["server", "cluster"])
def test_two_deployments_on_one_redis_spend_their_own_budgets(
    redis: str, redis_url: str, redis_cluster_url: str, tmp_path: Path, services: Settings,
) -> None:
    url = redis_url if redis == "server" else redis_cluster_url
    config = tmp_path / "tierflow.toml"
    config.write_text(f"[rewards.prizes.new666]\ncount = {POOL}\n")
    deployments = [replace(services, redis_url=url, topics=Topics(prefix=p)) for p in ("east.", "west.")]
    outcomes: Counter[tuple[str, str]] = Counter()
    for deployment in deployments:
        for user in ("u1", "u2", "u3"):
            claimed = tierflow(deployment, config, "code", "claim", "NEW666", "--user", user, "--json")
            outcomes[(deployment.topics.prefix, orjson.loads(claimed.stdout)["status"])] += 1
    # Shared keys would leave the second deployment an exhausted pool.
    assert outcomes == {("east.", "granted"): POOL, ("east.", "exhausted"): 1,
                        ("west.", "granted"): POOL, ("west.", "exhausted"): 1}
    for deployment in deployments:
        wallet = tierflow(deployment, config, "wallet", "u1", "--json")
        assert wallet.returncode == 0, wallet.stderr.decode()
        assert len(orjson.loads(wallet.stdout)["coupons"]) == 1
    # Every key sits under one of the two namespaces, none where a deployment without one writes.
    keys = list(connect(url).scan_iter(count=1000))
    assert keys and all(key.startswith(("east.", "west.")) for key in keys)
