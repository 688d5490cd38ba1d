"""The same end-to-end, rewards and fault tests as on one Redis, run against a local
3-master Redis Cluster (tests/fixtures/cluster.py): REDIS_URL names one node, and
the worker, the CLI and the checks find the rest. The results must equal the same
batch truth, and budgets must hold under concurrency, exactly as on one server."""

from __future__ import annotations

from pathlib import Path

from redis.cluster import RedisCluster

from tests.e2e import test_spine, test_tiers
from tests.pipeline.rewards import test_ledger
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.state.store import connect


def test_one_node_url_gives_a_cluster_client(redis_cluster_url: str) -> None:
    client = connect(redis_cluster_url)
    assert isinstance(client, RedisCluster)
    assert len(client.get_primaries()) == 3


def test_stream_equals_batch_across_a_kill_9(redis_cluster_settings: Settings, tmp_path: Path) -> None:
    test_spine.test_kill_9_mid_stream_then_restart(redis_cluster_settings, tmp_path)


def test_tier_changes_survive_kill_9(redis_cluster_settings: Settings, tmp_path: Path) -> None:
    test_tiers.test_tier_changes_survive_kill_9_without_duplicates_or_gaps(redis_cluster_settings, tmp_path)


def test_budget_under_concurrency_is_never_overspent(redis_cluster_url: str) -> None:
    test_ledger.test_budget_under_concurrency_is_never_overspent(redis_cluster_url)


def test_universal_code_under_concurrency(redis_cluster_url: str) -> None:
    test_ledger.test_universal_code_under_concurrency(redis_cluster_url)


def test_rewards_kill_9_then_replay_grants_everything_once(redis_cluster_url: str) -> None:
    test_ledger.test_kill_9_mid_stream_then_replay_grants_everything_once(redis_cluster_url)
