"""Tiers through the real worker: time decay on an injected (event-time) clock,
and tier.changes after a kill -9: no duplicate, no gap, final tiers consistent."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import orjson

from tests.fixtures.worker import (
    WorkerProcess,
    population_events,
    read_to_end,
    running_worker,
    send_events,
    wait_processed,
)
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.kafka import lag
from tierflow.pipeline.state.store import connect
from tierflow.pipeline.state.summary import DAY_MS, iso
from tierflow.pipeline.tiering.store import TierStore


def purchase(user: str, n: int, ts_ms: int, amount: float = 300.0) -> dict:
    return {"event_id": f"{user}-p{n}", "type": "purchase", "user_id": user, "ts": ts_ms, "channel": "app",
            "order_id": f"{user}-o{n}", "amount": amount, "currency": "CNY",
            "items": [{"sku": "DF001", "category": "dried_fruit", "qty": 1, "price": amount}]}


def browse(user: str, n: int, ts_ms: int) -> dict:
    return {"event_id": f"{user}-b{n}", "type": "browse", "user_id": user, "ts": ts_ms,
            "channel": "app", "page": "home"}


def wait_until(check, timeout: float, worker: WorkerProcess, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert worker.alive, worker.log_tail()
        assert time.monotonic() < deadline, f"timed out waiting for {what}; log:\n{worker.log_tail()}"
        time.sleep(0.3)


def changes_by_user(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        out[r["user_id"]].append(r)
    return out


def test_recency_decays_on_time_with_an_event_clock(settings: Settings, tmp_path: Path) -> None:
    settings = replace(settings, clock="event")
    # Midday, so that "31 days later" is unambiguous in calendar days.
    base = (int(time.time() * 1000) // DAY_MS - 60) * DAY_MS + DAY_MS // 2
    tiers = TierStore(connect(settings.redis_url), load_config())

    def fresh() -> tuple[int | None, str | None]:
        stored = tiers.stored("fresh")
        return (stored.scores.r, stored.segment) if stored and stored.scores else (None, None)

    with running_worker(settings, tmp_path) as worker:
        # Three customers who last bought 40 days ago (R=1, M=1) and one who buys 300 now
        # (R=5, M=2): mean R 2, mean M 1.25, so "fresh" is high on R and M: important_develop.
        send_events(settings, [purchase(f"old{i}", 1, base - 40 * DAY_MS) for i in range(3)])
        send_events(settings, [purchase("fresh", 1, base)])
        wait_processed(settings, worker)
        wait_until(lambda: tiers.report()["means"] == {"r": 2.0, "f": 1.0, "m": 1.25}, 30, worker, "means")
        wait_until(lambda: fresh() == (5, "important_develop"), 30, worker, "the first evaluation")

        # Time passes only through events: a visitor browses now and then. Expected state
        # half a day after each boundary (R: 5 days -> 5, 10 -> 4, 20 -> 3, 30 -> 2; M leaves
        # the 30-day window on day 30).
        steps = [(5, (5, "important_develop")), (6, (4, "important_develop")),
                 (30, (2, "general_develop")), (31, (1, "general_win_back"))]
        for n, (day, expected) in enumerate(steps):
            send_events(settings, [browse("clock", n, base + day * DAY_MS)])
            wait_processed(settings, worker)
            wait_until(lambda expected=expected: fresh() == expected, 30, worker, f"day {day}: {expected}")

    fresh_changes = changes_by_user(read_to_end(settings, settings.topics.tier_changes))["fresh"]
    segment = [c for c in fresh_changes if c["dimension"] == "segment"]
    assert [c["version"] for c in segment] == list(range(1, len(segment) + 1))
    # Between boundaries a decayed user is judged against the previous means snapshot
    # until the next one (the documented means-shift lag), so means_shift hops may interleave.
    assert {c["reason"] for c in segment} <= {"event", "means_shift", "time_decay"}
    last = segment[-1]
    assert (last["old"], last["new"], last["reason"]) == ("general_develop", "general_win_back", "time_decay")
    assert last["scores"]["r"] == 1
    # Dated at the boundary that passed (R drops to 1 on day 31), not when the worker noticed.
    assert last["event_time"][:10] == iso(base + 31 * DAY_MS)[:10]


def test_tier_changes_survive_kill_9_without_duplicates_or_gaps(settings: Settings, tmp_path: Path) -> None:
    events, _ = population_events(users=800, days=90, seed=31, duplicate_share=0.05)
    send_events(settings, events, batch=1)
    total = sum(r.lag for r in lag.measure(settings))
    client = connect(settings.redis_url)
    tiers = TierStore(client, load_config())
    with running_worker(settings, tmp_path) as worker:
        wait_until(lambda: 0 < sum(r.lag for r in lag.measure(settings)) < total * 0.7, 120, worker, "progress")
        worker.kill9()
        worker.start()
        wait_processed(settings, worker)
        wait_until(lambda: not tiers.outbox.users(10), 60, worker, "the outbox to drain")
        # Let a means snapshot and its sweep settle.
        time.sleep(7)
        wait_until(lambda: not tiers.outbox.users(10), 60, worker, "the outbox to drain")

    records = read_to_end(settings, settings.topics.tier_changes)
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    seqs: dict[str, list[int]] = defaultdict(list)
    last_value: dict[tuple[str, str], str | None] = {}
    for r in records:
        by_key[(r["user_id"], r["dimension"])].append(r["version"])
        seqs[r["user_id"]].append(r["seq"])
        last_value[(r["user_id"], r["dimension"])] = r["new"]
    for key, versions in by_key.items():
        assert sorted(versions) == list(range(1, len(versions) + 1)), (key, versions)
    for user, user_seqs in seqs.items():
        assert sorted(user_seqs) == list(range(1, len(user_seqs) + 1)), (user, user_seqs)

    # What was published ends where the stored tiers are, for every user and dimension.
    users = {e["user_id"] for e in events}
    assert {u for u, _ in by_key} == users
    for user in users:
        stored = tiers.stored(user)
        for dimension, versions in tiers.versions(user).items():
            assert len(by_key.get((user, dimension), [])) == versions, (user, dimension)
            if versions:
                assert last_value[(user, dimension)] == stored.value(dimension), (user, dimension)
    # And the stored tiers are what a fresh evaluation of the final state gives.
    for user in sorted(users)[:200]:
        stored = tiers.stored(user)
        again = tiers.preview(user, stored.as_of_ms)
        assert orjson.dumps(again.values()) == orjson.dumps(stored.values()), user
