"""The ClickHouse archive on the real engine (embedded chDB here; a server when
CLICKHOUSE_URL is set): migrations, exact AIPL under duplicates and replays,
tier-change and reward tables, and the Kafka writer riding out outages."""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from pipeline.archive import aipl, reports
from pipeline.archive.handle import Archive
from pipeline.archive.migrate import (
    MIGRATIONS_DIR,
    MigrationError,
    load_migrations,
    migrate,
    split_statements,
)
from pipeline.context import Context
from pipeline.settings import Settings
from pipeline.synth import Population
from tests.archive_support import (
    aipl_truth,
    archive_context,
    archive_directly,
    counts,
    drop_if_server,
    event_day,
    touch_topic,
)

DAY_MS = 86_400_000


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return archive_context(Settings.from_env(), tmp_path / "home")


@pytest.fixture
def archive(ctx: Context) -> Iterator[Archive]:
    handle = Archive(ctx.settings, ctx.config.archive)
    yield handle
    drop_if_server(ctx, handle)
    handle.close()


def population(users: int, days: int, seed: int) -> list[dict]:
    now_ms = int(time.time() * 1000)
    return list(Population(users, days, now_ms, seed=seed, run=f"a{seed}").events())


def with_duplicates(events: list[dict], share: float, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = events + rng.sample(events, int(len(events) * share))
    rng.shuffle(out)
    return out


# --- migrations ---------------------------------------------------------------------------


def test_split_statements_handles_comments_and_trailing_semicolons() -> None:
    sql = (
        "-- head\nCREATE TABLE a (x UInt8) -- c;\nENGINE = Log; -- after\n\n"
        "-- note\nSELECT 1;\n-- end\n"
    )
    assert split_statements(sql) == [
        "-- head\nCREATE TABLE a (x UInt8) -- c;\nENGINE = Log",
        "-- note\nSELECT 1",
    ]


def test_migrations_are_versioned_and_idempotent(archive: Archive, tmp_path: Path) -> None:
    backend = archive.backend()  # migrates on first use
    files = load_migrations()
    assert archive.migrations() == [m.version for m in files]
    assert migrate(backend) == []  # a second run applies nothing
    tables = {row[0] for row in backend.query("SHOW TABLES")}
    assert {"touch_events", "aipl_user_daily", "aipl_category_daily", "user_daily", "user_daily_v",
            "aipl_first_reached", "aipl_stage_transitions", "tier_changes", "reward_grants",
            "schema_migrations"} <= tables

    # A new file is applied on the next run; editing an applied one is refused.
    changed = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, changed)
    extra = "CREATE TABLE IF NOT EXISTS extra (x UInt8) ENGINE = Log;\n"
    (changed / "900_extra.sql").write_text(extra)
    assert [m.version for m in migrate(backend, changed)] == [900]
    assert "extra" in {row[0] for row in backend.query("SHOW TABLES")}
    first = sorted(changed.glob("001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(backend, changed)


# --- AIPL exactness -----------------------------------------------------------------------


def test_aipl_equals_independent_computation_despite_duplicates(
    ctx: Context, archive: Archive
) -> None:
    events = population(users=400, days=120, seed=3)
    stream = with_duplicates(events, 0.15, seed=3)
    archive_directly(ctx, archive, ((touch_topic(ctx, e), e) for e in stream))
    # A second delivery of a whole slice, as after a crash before the offset commit.
    archive_directly(ctx, archive, ((touch_topic(ctx, e), e) for e in stream[:2000]))
    backend = archive.backend()

    days = sorted(event_day(e) for e in events)
    whole = aipl.Period(days[0], days[-1])
    mid = aipl.Period(days[0] + timedelta(days=30), days[0] + timedelta(days=75))
    for period in (whole, mid):
        want = aipl_truth(events, period.start, period.end)[None]
        got = aipl.funnel(backend, period)
        assert counts(got.to_json()) == want
        assert want["awareness"] > want["interest"] > want["purchase"] > want["loyalty"] > 0
        assert got.rates["a_to_i"] == round(want["interest"] / want["awareness"], 6)

        for by in aipl.BREAKDOWNS:
            want_groups = aipl_truth(events, period.start, period.end, by)
            got_groups = aipl.breakdown(backend, by, period)
            assert {k: counts(f.to_json()) for k, f in got_groups.items()} == want_groups
            assert len(got_groups) >= 5

        want_weeks = aipl_truth(events, period.start, period.end, "week")
        got_weeks = aipl.weekly_trend(backend, period)
        assert {w: counts(f.to_json()) for w, f in got_weeks if f.awareness} == want_weeks
        assert [w for w, _ in got_weeks] == sorted(w for w, _ in got_weeks)
        assert all(w.weekday() == 0 for w, _ in got_weeks)

    # Open-ended periods default to the archive's first and last day.
    assert aipl.report(backend, None, None) == aipl.funnel(backend, whole).to_json()
    # Every event is stored once (FINAL collapses the duplicate copies).
    unique = {(e["user_id"], e["event_id"]) for e in events}
    assert backend.query("SELECT count() FROM touch_events FINAL")[0][0] == len(unique)


def test_daily_aggregates_and_stage_transitions_are_exact(ctx: Context, archive: Archive) -> None:
    events = population(users=120, days=60, seed=5)
    stream = with_duplicates(events, 0.3, seed=5)
    archive_directly(ctx, archive, ((touch_topic(ctx, e), e) for e in stream))
    backend = archive.backend()

    # Daily per-user revenue in cents and distinct orders.
    want: dict[tuple[date, str], list] = {}
    for e in events:
        if e["type"] == "purchase":
            slot = want.setdefault((event_day(e), e["user_id"]), [0, 0])
            slot[0] += 1
            slot[1] += round(e["amount"] * 100)
    got = {
        (day, user): [orders, revenue]
        for day, user, orders, revenue in backend.query(
            "SELECT day, user_id, orders, revenue_cents FROM user_daily_v WHERE orders > 0"
        )
    }
    assert got == want

    # First time each user reached each stage; loyalty = the second distinct order.
    first: dict[tuple[str, str], int] = {}
    orders: dict[str, dict[str, int]] = {}
    for e in events:
        t = int(datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp() * 1000) \
            if isinstance(e["ts"], str) else e["ts"]
        stages = ["aware"] + (["interest"] if e["type"] != "browse" else [])
        if e["type"] == "purchase":
            stages.append("purchase")
            by_order = orders.setdefault(e["user_id"], {})
            by_order[e["order_id"]] = min(by_order.get(e["order_id"], t), t)
        for stage in stages:
            key = (e["user_id"], stage)
            first[key] = min(first.get(key, t), t)
    for user, by_order in orders.items():
        if len(by_order) >= 2:
            first[(user, "loyalty")] = sorted(by_order.values())[1]
    rows = backend.query(
        "SELECT user_id, stage, toUnixTimestamp64Milli(reached_at) FROM aipl_stage_transitions"
    )
    assert {(u, s): int(t) for u, s, t in rows} == first
    assert {s for _, s in first} == {"aware", "interest", "purchase", "loyalty"}


# --- tier changes and reward records ------------------------------------------------------


def _iso(day: date, hour: int = 12) -> str:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_tier_changes_and_reward_records_are_stored_once(ctx: Context, archive: Archive) -> None:
    topics = ctx.settings.topics
    d0 = date(2026, 3, 2)
    seg = {"dimension": "segment"}
    changes = [
        # u1: none -> general_develop (before the period) -> important_value (in it)
        {**seg, "user_id": "u1", "old": None, "new": "general_develop", "reason": "event",
         "version": 1, "event_time": _iso(d0), "scores": {"r": 5, "f": 1, "m": 2}},
        {**seg, "user_id": "u1", "old": "general_develop", "new": "important_value",
         "reason": "event", "version": 2, "event_time": _iso(d0 + timedelta(days=10)),
         "scores": {"r": 5, "f": 4, "m": 5}},
        # u2: important_value -> important_retain -> important_win_back, both in the period
        {"user_id": "u2", "dimension": "segment", "old": None, "new": "important_value",
         "reason": "event", "version": 1, "event_time": _iso(d0)},
        {**seg, "user_id": "u2", "old": "important_value", "new": "important_retain",
         "reason": "time_decay", "version": 2, "event_time": _iso(d0 + timedelta(days=8))},
        {"user_id": "u2", "dimension": "segment", "old": "important_retain",
         "new": "important_win_back", "reason": "time_decay", "version": 3,
         "event_time": _iso(d0 + timedelta(days=20))},
        # u3: only a membership tier
        {"user_id": "u3", "dimension": "membership", "old": "ordinary", "new": "super",
         "reason": "event", "version": 1, "event_time": _iso(d0 + timedelta(days=9))},
    ]
    grants = [
        {"record_id": "g1", "kind": "grant", "user_id": "u1", "campaign": "upgrade", "rule": "r1",
         "prize_type": "coupon", "value_cents": 2000, "budget_cents": 100000,
         "event_time": _iso(d0 + timedelta(days=10))},
        {"record_id": "g2", "kind": "grant", "user_id": "u2", "campaign": "upgrade", "rule": "r1",
         "prize_type": "coupon", "value_cents": 2000, "budget_cents": 100000,
         "event_time": _iso(d0 + timedelta(days=11))},
        {"record_id": "g3", "kind": "grant", "user_id": "u2", "campaign": "winback", "rule": "r2",
         "prize_type": "points", "points": 500, "event_time": _iso(d0 + timedelta(days=20))},
        {"record_id": "g2", "kind": "cancellation", "user_id": "u2", "campaign": "upgrade",
         "rule": "r1", "prize_type": "coupon", "value_cents": 2000,
         "event_time": _iso(d0 + timedelta(days=12))},
    ]
    records = [(topics.tier_changes, c) for c in changes]
    records += [(topics.reward_grants, g) for g in grants]
    records.append((topics.tier_changes, {"user_id": "u9", "dimension": "segment"}))  # invalid
    batch = archive_directly(ctx, archive, records)
    assert batch.skipped == {f"{topics.tier_changes}:invalid": 1}
    archive_directly(ctx, archive, records[:-1])  # every record delivered twice
    backend = archive.backend()

    end = d0 + timedelta(days=30)
    assert reports.tier_distribution(backend, end) == {
        "membership": {"super": 1},
        "segment": {"important_value": 1, "important_win_back": 1},
    }
    # As of day 9 u1 was still general_develop and u2 important_retain.
    assert reports.tier_distribution(backend, d0 + timedelta(days=9))["segment"] == {
        "general_develop": 1, "important_retain": 1,
    }
    # Net migration over [d0+5, end]: where each user stood before it and at its end.
    flows = reports.segment_migration(backend, aipl.Period(d0 + timedelta(days=5), end), "segment")
    assert flows == [
        {"from": "general_develop", "to": "important_value", "users": 1},
        {"from": "important_value", "to": "important_win_back", "users": 1},
    ]

    rewards = reports.rewards_summary(backend, None)
    by_campaign = {c["campaign"]: c for c in rewards["campaigns"]}
    assert by_campaign["upgrade"]["granted"] == 2
    assert by_campaign["upgrade"]["granted_cents"] == 4000
    assert by_campaign["upgrade"]["cancelled_cents"] == 2000
    assert by_campaign["upgrade"]["net_cents"] == 2000
    assert by_campaign["upgrade"]["budget_cents"] == 100000
    assert by_campaign["winback"]["points"] == 500
    assert by_campaign["winback"]["budget_cents"] is None
    assert rewards["by_prize"] == {"coupon": 2, "points": 1}
    stored = backend.query(
        "SELECT scores FROM tier_changes FINAL WHERE user_id = 'u1' AND version = 2"
    )
    assert orjson.loads(stored[0][0]) == {"r": 5, "f": 4, "m": 5}
