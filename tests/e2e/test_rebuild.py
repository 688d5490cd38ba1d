"""`tierflow rebuild` after Redis lost everything (no persistence): the real worker runs
over a population, Redis is flushed, the state is rebuilt from Kafka and the worker
replays. Every customer's state equals the batch truth again, tiers, wallets and
budgets are what they were, and nothing is published or granted a second time."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import orjson
import redis

from tests.fixtures.checks import assert_state_matches, differences
from tests.fixtures.worker import (
    WorkerProcess,
    cli,
    population_events,
    read_to_end,
    running_worker,
    send_events,
    wait_processed,
)
from tierflow.pipeline.config.domain import Config, load_config
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.rewards.engine import RewardEngine
from tierflow.pipeline.rewards.ledger import RewardKeys
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.tiering.keys import TierKeys
from tierflow.pipeline.tiering.store import TierStore

CLAIMERS = [f"c{i:06d}" for i in range(1, 9)]  # NEW666 coupons from a universal-code pool


def records(settings: Settings, topic: str) -> list[bytes]:
    """Every record on the topic, in a fixed order (partitions interleave as they are read)."""
    return records_of(read_to_end(settings, topic))


def records_of(found: list[dict]) -> list[bytes]:
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in found)


def output_counts(settings: Settings) -> tuple[int, int]:
    return (len(read_to_end(settings, settings.topics.tier_changes)),
            len(read_to_end(settings, settings.topics.reward_grants)))


def wait_quiet(settings: Settings, client: redis.Redis, config: Config, worker: WorkerProcess,
               users: list[str]) -> None:
    """Until every outbox is published and nothing new comes out for longer than a
    means-snapshot interval (a snapshot may move customers after the last event)."""
    calm_for_s = 2 * config.tiering.population.snapshot_interval_ms / 1000
    deadline = time.monotonic() + 300
    last, since = None, time.monotonic()
    while True:
        assert worker.alive, worker.log_tail()
        assert time.monotonic() < deadline, f"the worker never went quiet; log:\n{worker.log_tail()}"
        pipe = client.pipeline(transaction=False)
        for user in users:
            pipe.llen(TierKeys.of(user).outbox)
            pipe.llen(RewardKeys.of(user).outbox)
        waiting = sum(pipe.execute())
        now = output_counts(settings)
        if waiting or now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= calm_for_s:
            return
        time.sleep(0.5)


def snapshot(client: redis.Redis, config: Config, users: list[str], now_ms: int) -> dict[str, object]:
    """What a user would check: each customer's tiers and versions and wallet, and the
    campaigns' budgets, inventory and pools (refusal counters aside: no record says them)."""
    tiers = TierStore(client, config)
    engine = RewardEngine(client, config.rewards)
    report = engine.report(now_ms)
    for campaign in report["campaigns"].values():  # type: ignore[attr-defined]
        campaign.pop("denied")
    return {
        "tiers": {u: (e.values() if (e := tiers.stored(u)) else None, tiers.versions(u)) for u in users},
        "wallets": {u: engine.wallet(u, now_ms) for u in users},
        "rewards": report,
        "segments": tiers.report(),
    }


def check_outputs(changes: list[dict], grants: list[dict]) -> None:
    """No duplicate on either topic; each customer's versions run 1, 2, 3, ... with no gap."""
    keys = Counter((c["user_id"], c["dimension"], c["version"]) for c in changes)
    assert [k for k, n in keys.items() if n > 1] == []
    versions: dict[tuple[str, str], list[int]] = {}
    for c in changes:
        versions.setdefault((c["user_id"], c["dimension"]), []).append(c["version"])
    assert all(sorted(v) == list(range(1, len(v) + 1)) for v in versions.values())
    assert [k for k, n in Counter(g["record_id"] for g in grants).items() if n > 1] == []
    granted = Counter(g["idempotency_key"] for g in grants if g["kind"] == "grant")
    assert [k for k, n in granted.items() if n > 1] == []  # no (rule, user, trigger) granted twice


def test_rebuild_after_redis_lost_everything(settings: Settings, tmp_path: Path) -> None:
    settings = replace(settings, clock="event")  # tiers as of the newest event: the same before and after
    config = load_config()
    client = connect(settings.redis_url)
    events, now_ms = population_events(users=250, days=120, seed=61, duplicate_share=0.05)
    users = sorted({e["user_id"] for e in events})

    with running_worker(settings, tmp_path) as worker:
        send_events(settings, events, batch=5)
        wait_processed(settings, worker)
        for user in CLAIMERS:
            claimed = cli(settings, "code", "claim", "NEW666", "--user", user)
            assert claimed.returncode == 0, claimed.stderr.decode()
        wait_quiet(settings, client, config, worker, users)
        running = cli(settings, "rebuild", "--yes")
        assert running.returncode == 3, running.stderr.decode()
        assert f"a worker of group {settings.group_id} is running" in running.stderr.decode()
        before = snapshot(client, config, users, now_ms)
        changes, grants = (read_to_end(settings, t) for t in (settings.topics.tier_changes,
                                                              settings.topics.reward_grants))
    assert len(changes) > len(users) and {g["kind"] for g in grants} >= {"grant", "expiry"}

    client.flushdb()  # Redis lost without persistence
    rebuilt = cli(settings, "rebuild", "--yes", timeout=600)
    assert rebuilt.returncode == 0, rebuilt.stderr.decode()
    assert b"start `tierflow worker`" in rebuilt.stdout

    with running_worker(settings, tmp_path) as worker:
        wait_processed(settings, worker)  # the replay of the whole input
        wait_quiet(settings, client, config, worker, users)
        assert differences(before, snapshot(client, config, users, now_ms)) == []
        assert_state_matches(settings, events, [now_ms])
        # Nothing was published or granted again.
        assert records(settings, settings.topics.tier_changes) == records_of(changes)
        assert records(settings, settings.topics.reward_grants) == records_of(grants)

        # Life goes on: the next events continue the customers' versions.
        buyers = users[:20]
        more = [{"event_id": f"after-{u}", "type": "purchase", "user_id": u, "ts": now_ms + 1000,
                 "channel": "app", "order_id": f"after-{u}", "amount": 388.0, "currency": "CNY",
                 "items": [{"sku": "DF001", "category": "dried_fruit", "qty": 1, "price": 388.0}]}
                for u in buyers]
        send_events(settings, more)
        wait_processed(settings, worker)
        wait_quiet(settings, client, config, worker, users)
        later = read_to_end(settings, settings.topics.tier_changes)
        assert len(later) > len(changes)
        check_outputs(later, read_to_end(settings, settings.topics.reward_grants))
    assert_state_matches(settings, events + more, [now_ms + 1000])
    assert StateStore(client, config.state.retention_days).user_count() == len(users)
