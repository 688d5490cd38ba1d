"""Exactly once on the output topics, through real worker processes: three workers
in one group, kill -9 at random moments and restarts (so rebalances), while events
arrive and records are also written from outside the workers (code claims, points
that expire at once). Then reward.grants and tier.changes, read from the start,
hold every record once, versions without gaps, everything the stores hold, and no
campaign spent more than its budget."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from confluent_kafka import ConsumerGroupState

from tests.fixtures.checks import Published, settled
from tests.fixtures.worker import WorkerProcess, population_events, send_events
from tierflow.agents.clock import wall_ms
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.kafka import lag
from tierflow.pipeline.kafka.topics import admin, ensure_topics
from tierflow.pipeline.rewards.engine import RewardEngine
from tierflow.pipeline.state.store import connect
from tierflow.pipeline.tiering.store import TierStore

WORKERS = 3
KILLS = 5
# The events go out in CHUNKS over about CHUNKS * CHUNK_PAUSE_S seconds, while the kills happen.
CHUNKS = 60
CHUNK_PAUSE_S = 0.4
# Users who also claim a code and get points that expire at once, from outside the workers.
OUTSIDERS = 48
# A short session, so that the group notices a killed worker in seconds; no archive (not
# under test, and three embedded chDB writers would crowd the machine); a first-purchase
# budget that runs out, so that overspending would show.
CONFIG = """
[worker]
session_timeout_ms = 6000
[archive]
enabled = false
[rewards.campaigns.first_purchase]
budget_cents = 60000
"""


def wait_for_group(settings: Settings, size: int, check: Callable[[], None],
                   other_than: frozenset[str] = frozenset(), timeout: float = 120) -> frozenset[str]:
    """The members of the input group once it is stable with `size` members and is not
    the group `other_than` (a killed member has timed out, its successor joined)."""
    client = admin(settings)
    deadline = time.monotonic() + timeout
    while True:
        check()
        group = client.describe_consumer_groups([settings.group_id])[settings.group_id].result()
        members = frozenset(m.member_id for m in group.members)
        if group.state == ConsumerGroupState.STABLE and len(members) == size and members != other_than:
            return members
        assert time.monotonic() < deadline, f"group {settings.group_id}: {group.state}, {len(members)} members"
        time.sleep(0.5)


def test_every_output_record_once_across_kill_9_and_rebalances(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "tierflow.toml"
    path.write_text(CONFIG)
    settings = replace(settings, config_path=path)
    config = load_config(path)
    client = connect(settings.redis_url)
    engine = RewardEngine(client, config.rewards)
    tiers = TierStore(client, config)
    events, _ = population_events(users=600, days=60, seed=12, duplicate_share=0.05)
    users = sorted({e["user_id"] for e in events})
    chunks = [events[n::CHUNKS] for n in range(CHUNKS)]
    outsiders = users[::len(users) // OUTSIDERS][:OUTSIDERS]
    rng = random.Random(12)
    ensure_topics(settings)

    def feed() -> None:
        """Events at a steady pace, so that kills land mid-batch; and records no worker
        wrote, which reach their lanes through the outbox indexes."""
        for n, chunk in enumerate(chunks):
            send_events(settings, chunk)
            for user in outsiders[n::CHUNKS]:
                engine.claim_code("NEW666", user, wall_ms())
                engine.adjust_points(user, 100, f"bonus-{user}", wall_ms(), "test", expires_days=0)
            time.sleep(CHUNK_PAUSE_S)

    workers = [WorkerProcess(settings, tmp_path / f"w{n}" / "worker.log") for n in range(WORKERS)]
    feeder = threading.Thread(target=feed, daemon=True)
    kills = 0

    def all_alive(_remaining: int = 0) -> None:
        for worker in workers:
            assert worker.alive, worker.log_tail()

    try:
        for worker in workers:
            worker.log_path.parent.mkdir()
            worker.start()
        feeder.start()
        group = wait_for_group(settings, WORKERS, all_alive)
        for _ in range(KILLS):
            # Each kill strikes a full group (so lanes move every time) at a random moment.
            time.sleep(rng.uniform(0.0, 2.0))
            victim = rng.choice(workers)
            victim.kill9()
            kills += 1
            victim.start()
            group = wait_for_group(settings, WORKERS, all_alive, other_than=group)
        feeder.join(180)
        lag.wait(settings, 180, all_alive)
        # Settled twice in a row with the same sizes: the timer's means shift may still move tiers.
        before, deadline = None, time.monotonic() + 120
        while (sizes := settled(settings, config)) is None or sizes != before:
            assert time.monotonic() < deadline, "outputs did not settle:\n" + workers[0].log_tail()
            before = sizes
            time.sleep(3)
        all_alive()
    finally:
        for worker in workers:
            worker.stop()

    published = Published(settings)
    changes = [value for _, _, value in published.changes]
    grants = [value for _, _, value in published.grants]
    duplicated_changes = [k for k, n in Counter((c["user_id"], c["dimension"], c["version"]) for c in changes).items()
                          if n > 1]
    duplicated_grants = [k for k, n in Counter(g["record_id"] for g in grants).items() if n > 1]
    print(f"\n{kills} kills survived; tier.changes: {len(changes)} records, {len(duplicated_changes)} duplicated; "
          f"reward.grants: {len(grants)} records, {len(duplicated_grants)} duplicated")
    assert kills == KILLS
    assert duplicated_changes == []
    assert duplicated_grants == []

    # Versions 1, 2, 3 ... per user and dimension, and seq per user, with no gap; and as
    # many as the store counts: nothing was lost either.
    versions: dict[tuple[str, str], list[int]] = defaultdict(list)
    seqs: dict[str, list[int]] = defaultdict(list)
    for c in changes:
        versions[(c["user_id"], c["dimension"])].append(c["version"])
        seqs[c["user_id"]].append(c["seq"])
    for key, found in versions.items():
        assert sorted(found) == list(range(1, len(found) + 1)), key
    for user, found in seqs.items():
        assert sorted(found) == list(range(1, len(found) + 1)), user
    for user in users:
        for dimension, stored in tiers.versions(user).items():
            assert len(versions.get((user, dimension), [])) == stored, (user, dimension)

    # Every grant the ledger made is on the topic; every lot given at once expired once.
    record_ids = {g["record_id"] for g in grants}
    for user in engine.ledger.users():
        missing = {r.record_id for r in engine.ledger.grants(user)} - record_ids
        assert not missing, (user, missing)
    # Refunds in the population take back first-purchase points: adjustments of their own.
    kinds = Counter(g["kind"] for g in grants if g.get("reason") != "refund")
    assert kinds["points_adjust"] == kinds["expiry"] == OUTSIDERS
    # Event-, code- and tier-triggered grants all went through the lanes.
    assert {"first_purchase_points", "new666_claim", "super_upgrade"} <= {g.get("rule") for g in grants}

    # No campaign committed more than its budget, and the tight one did run out.
    spent: dict[str, int] = defaultdict(int)
    for g in grants:
        if g.get("campaign"):
            spent[g["campaign"]] += g.get("cost_cents") or 0
    for campaign, cents in spent.items():
        budget = config.rewards.campaigns[campaign].budget_cents
        assert budget is None or cents <= budget, (campaign, cents, budget)
    report = engine.report(wall_ms())["campaigns"]
    assert report["first_purchase"]["denied"]["budget"] > 0
    assert spent["first_purchase"] == report["first_purchase"]["spent_cents"]
