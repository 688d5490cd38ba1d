"""`tierflow forget` against the real services: a worker builds a population's state,
tiers, wallets and archive; one customer is forgotten. Nothing of theirs remains in Redis
or the archive, everyone else is untouched (state equal to the batch truth, population
counts exact over the remaining customers), `tierflow rebuild` and the replay skip them,
and new events of the id start a new customer."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import orjson
import redis

from tests.e2e.test_rebuild import wait_quiet
from tests.fixtures.checks import assert_state_matches
from tests.fixtures.worker import (
    cli,
    population_events,
    read_committed,
    read_to_end,
    running_worker,
    send_events,
    wait_processed,
)
from tierflow.pipeline.archive import aipl
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.config.domain import Config, load_config
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.erasure.archive import rows_of
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.state.summary import summarize
from tierflow.pipeline.tiering.keys import TierKeys
from tierflow.pipeline.tiering.store import TierStore


def mentions(client: redis.Redis, user: str) -> list[str]:
    """Every key that names the user or holds the user id in its contents."""
    found = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            parts = [client.get(key) or ""]
        elif kind == "hash":
            parts = [f"{k}={v}" for k, v in client.hgetall(key).items()]
        elif kind == "set":
            parts = list(client.smembers(key))
        elif kind == "zset":
            parts = list(client.zrange(key, 0, -1))
        else:
            parts = list(client.lrange(key, 0, -1))
        if user in key or any(user in part for part in parts):
            found.append(key)
    return found


def tally(client: redis.Redis, users: list[str]) -> dict[str, int]:
    """The population counts the customers' own committed tiers add up to."""
    counts: Counter[str] = Counter()
    for user in users:
        tier = client.hgetall(TierKeys.of(user).tier)
        if not tier:
            continue
        counts["users"] += 1
        counts.update(f"{field[2:]}:{value}" for field, value in tier.items() if field[:2] in ("v:", "s:"))
    return dict(counts)


def population_counts(client: redis.Redis, config: Config) -> dict[str, int]:
    return {name: n for name, n in TierStore(client, config).stats.counts().items() if n}


def archived(settings: Settings, config: Config, user: str) -> dict[str, int]:
    archive = Archive(settings, config.archive)
    try:
        return {table: n for table, n in rows_of(archive.backend(), user).items() if n}
    finally:
        archive.close()


def funnel(settings: Settings, config: Config) -> dict[str, object]:
    """The AIPL funnel over everything archived."""
    archive = Archive(settings, config.archive)
    try:
        backend = archive.backend()
        return aipl.funnel(backend, aipl.resolve(backend, None, None)).to_json()
    finally:
        archive.close()


def test_forget_erases_a_customer_everywhere_and_replays_skip_them(settings: Settings, tmp_path: Path) -> None:
    # The worker's home (its chDB archive) is the commands' too; tiers as of the newest event.
    settings = replace(settings, home=tmp_path / "home", clock="event")
    config = load_config()
    client = connect(settings.redis_url)
    events, now_ms = population_events(users=80, days=60, seed=73, duplicate_share=0.05)
    users = sorted({e["user_id"] for e in events})
    buyers = Counter(e["user_id"] for e in events if e["type"] == "purchase")
    victim = buyers.most_common(1)[0][0]
    others = [u for u in users if u != victim]
    kept = [e for e in events if e["user_id"] != victim]
    # Dead-lettered (dated 10 days ahead): the victim's must not come back through `dlq replay`.
    poison = [{"event_id": f"future-{u}", "type": "browse", "user_id": u, "ts": now_ms + 10 * 86_400_000,
               "channel": "app", "page": "home"} for u in (victim, others[0])]

    with running_worker(settings, tmp_path) as worker:
        send_events(settings, events + poison, batch=5)
        wait_processed(settings, worker)
        wait_quiet(settings, client, config, worker, users)
        running = cli(settings, "forget", victim, "--yes")
        assert running.returncode == 3, running.stderr.decode()
        assert f"run `tierflow forget {victim}` again" in running.stderr.decode()
    assert mentions(client, victim) and archived(settings, config, victim)["touch_events"] > 0

    asked = cli(settings, "forget", victim)  # no terminal to answer: not confirmed, nothing changes
    assert asked.returncode == 4, asked.stderr.decode()
    assert "--yes" in asked.stderr.decode() and mentions(client, victim)
    bad = cli(settings, "forget", "x" * (config.ingest.max_id_length + 1), "--yes")
    assert bad.returncode == 2 and bad.stderr.decode().count("\n") == 1

    others_archived = archived(settings, config, others[0])
    funnel_before = funnel(settings, config)
    forgot = cli(settings, "forget", victim, "--yes", "--json")
    assert forgot.returncode == 0, forgot.stderr.decode()
    report = orjson.loads(forgot.stdout)
    assert report["user_id"] == victim and report["redis_keys"] > 0 and report["population_counted"]
    assert report["archive_rows"]["touch_events"] > 0

    assert mentions(client, victim) == []
    assert archived(settings, config, victim) == {}
    assert archived(settings, config, others[0]) == others_archived
    # The funnel keeps the customer's counts, under an anonymous id.
    assert funnel(settings, config) == funnel_before
    assert set(archived(settings, config, f"erased:{report['erasure_id']}")) == {"aipl_user_daily",
                                                                                "aipl_category_daily"}
    assert_state_matches(settings, kept, [now_ms])
    assert population_counts(client, config) == tally(client, others)
    erasures = read_to_end(settings, settings.topics.erasures)
    assert [(e["user_id"], e["erasure_id"]) for e in erasures] == [(victim, report["erasure_id"])]

    replay = cli(settings, "dlq", "replay")
    assert replay.returncode == 0 and replay.stdout.startswith(b"1 records would be sent again"), replay.stdout

    # Again: nothing left to erase, and the counts do not move.
    again = cli(settings, "forget", victim, "--yes", "--json")
    assert again.returncode == 0, again.stderr.decode()
    assert orjson.loads(again.stdout) == report | {"resumed": True, "redis_keys": 0, "population_counted": False,
                                                   "reservations": 0, "archive_rows": {}}
    assert population_counts(client, config) == tally(client, others)
    assert funnel(settings, config) == funnel_before
    assert len(read_to_end(settings, settings.topics.erasures)) == 1

    # Redis lost: the rebuild leaves the erased customer out.
    client.flushdb()
    rebuilt = cli(settings, "rebuild", "--yes", timeout=600)
    assert rebuilt.returncode == 0, rebuilt.stderr.decode()
    assert "1 erased customers left out" in rebuilt.stderr.decode()
    assert mentions(client, victim) == []
    assert_state_matches(settings, kept, [now_ms])
    assert population_counts(client, config) == tally(client, others)

    # The worker replays the whole input (the rebuild reset its group) and skips the erased
    # customer's events; a new event of the id starts a new customer.
    later = now_ms + 1000
    comeback = {"event_id": "after-erasure", "type": "browse", "user_id": victim, "ts": later, "channel": "app",
                "page": "home"}
    with running_worker(settings, tmp_path) as worker:
        send_events(settings, [comeback])
        wait_processed(settings, worker)
        wait_quiet(settings, client, config, worker, users)
    state = StateStore(client, config.state.retention_days).read(victim)
    assert state is not None
    fresh = summarize(victim, state, later, [30, 90], config.state.retention_days)
    assert fresh.counts["browse"] == 1 and fresh.frequency["lifetime"] == 0
    # The new customer's tier changes start again at version 1, after the erasure's marks.
    marks = erasures[0]["marks"]
    theirs = [(partition, offset, change) for partition, offset, change in
              read_committed(settings, settings.topics.tier_changes) if change["user_id"] == victim]
    new_changes = [change for partition, offset, change in theirs
                   if offset >= marks[f"{settings.topics.tier_changes}:{partition}"]]
    assert new_changes and {c["version"] for c in new_changes} == {1}
    assert archived(settings, config, victim) == {"touch_events": 1, "aipl_user_daily": 1, "user_daily": 1,
                                                  "aipl_first_reached": 1, "tier_changes": len(new_changes)}
    assert_state_matches(settings, [*kept, comeback], [later])
    assert population_counts(client, config) == tally(client, users)
