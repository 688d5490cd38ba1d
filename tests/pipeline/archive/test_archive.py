"""The ClickHouse archive on the real engine (embedded chDB here; a server when
CLICKHOUSE_URL is set): migrations, exact AIPL under duplicates and replays,
tier-change and reward tables, and the Kafka writer riding out outages."""

from __future__ import annotations

import logging
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import msgspec
import orjson
import pytest

from tests.fixtures.archive import (
    aipl_truth,
    archive_context,
    archive_directly,
    archive_lag,
    cli_env,
    counts,
    dashboard_process,
    domain_example_population,
    drop_if_server,
    engages,
    event_day,
    get_json,
    produce,
    running_archive,
    tier_change,
    tierflow,
    touch_topic,
    wait_until,
    with_archive_settings,
)
from tests.fixtures.worker import ROOT, free_port
from tierflow.pipeline.archive import aipl, reports
from tierflow.pipeline.archive.backend import open_backend
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.archive.migrate import (
    MIGRATIONS_DIR,
    MigrationError,
    load_migrations,
    migrate,
    split_statements,
)
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.demo.synth import Population
from tierflow.pipeline.kafka.topics import ensure_topics
from tierflow.schemas import reward_grants as reward_records
from tierflow.schemas.reward_grants import RewardItem, RewardRecord
from tierflow.schemas.tier_changes import ChangeScores, TierChange

DAY_MS = 86_400_000


def population(users: int, days: int, seed: int) -> list[dict]:
    now_ms = int(time.time() * 1000)
    return list(Population(users, days, now_ms, seed=seed, run=f"a{seed}").events())


def with_cart_removals(events: list[dict], seed: int) -> list[dict]:
    """Some browsers also remove something from their cart: engagement that is not interest."""
    rng = random.Random(seed)
    extra = [
        {**e, "event_id": f"{e['event_id']}-rm", "type": "cart", "action": "remove",
         "sku": "SN001", "category": e.get("category") or "snacks", "qty": 1, "price": 1.5}
        for e in events if e["type"] == "browse" and rng.random() < 0.1
    ]
    for e in extra:
        e.pop("page", None)
        e.pop("source", None)
    return events + extra


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


def test_migrations_can_be_recorded_for_a_schema_made_by_hand(ctx: Context, tmp_path: Path) -> None:
    """A cluster's schema is created by its operator; `tierflow migrate --record-only`
    marks the files applied so that workers leave it as it is."""
    backend = open_backend(ctx.settings, ctx.config.archive)
    try:
        recorded = migrate(backend, run=False)
        assert [m.version for m in recorded] == [m.version for m in load_migrations()]
        assert {row[0] for row in backend.query("SHOW TABLES")} == {"schema_migrations"}
        assert migrate(backend) == []  # nothing left to run
    finally:
        if ctx.settings.clickhouse_url:
            backend.execute(f"DROP DATABASE IF EXISTS {ctx.config.archive.database}")
        backend.close()


# --- AIPL exactness -----------------------------------------------------------------------


def test_aipl_equals_independent_computation_despite_duplicates(
    ctx: Context, archive: Archive
) -> None:
    events = with_cart_removals(population(users=400, days=120, seed=3), seed=3)
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
    events = with_cart_removals(population(users=120, days=60, seed=5), seed=5)
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
        stages = ["aware"] + (["interest"] if engages(e) else [])
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
    changes = [
        # u1: none -> general_develop (before the period) -> important_value (in it)
        tier_change("u1", "segment", None, "general_develop", "event", 1, _iso(d0),
                    scores={"r": 5, "f": 1, "m": 2}),
        tier_change("u1", "segment", "general_develop", "important_value", "event", 2,
                    _iso(d0 + timedelta(days=10)), scores={"r": 5, "f": 4, "m": 5}),
        # u2: important_value -> important_retain -> important_win_back, both in the period
        tier_change("u2", "segment", None, "important_value", "event", 1, _iso(d0)),
        tier_change("u2", "segment", "important_value", "important_retain", "time_decay", 2,
                    _iso(d0 + timedelta(days=8))),
        tier_change("u2", "segment", "important_retain", "important_win_back", "time_decay", 3,
                    _iso(d0 + timedelta(days=20))),
        # u3: only a membership tier
        tier_change("u3", "membership", "ordinary", "super", "event", 1, _iso(d0 + timedelta(days=9))),
    ]
    def ms(day: date) -> int:
        return int(datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp() * 1000)

    def coupon(item_id: str) -> dict:
        return {"item_id": item_id, "type": "coupon", "prize": "c20", "campaign": "upgrade",
                "rule": "r1", "value_cents": 2000, "granted_ms": ms(d0)}

    upgrade = {"campaign": "upgrade", "rule": "r1", "prize": "c20", "prize_type": "coupon"}
    grants = [  # records as the reward engine publishes them
        {**upgrade, "record_id": "g1", "kind": "grant", "user_id": "u1", "cost_cents": 2000,
         "at_ms": ms(d0 + timedelta(days=10)), "recorded_ms": ms(d0 + timedelta(days=10)),
         "items": [coupon("c1")], "trigger": "tier:segment:v2"},
        {**upgrade, "record_id": "g2", "kind": "grant", "user_id": "u2", "cost_cents": 2000,
         "at_ms": ms(d0 + timedelta(days=11)), "recorded_ms": ms(d0 + timedelta(days=11)),
         "items": [coupon("c2")]},
        {"record_id": "g3", "kind": "grant", "user_id": "u2", "campaign": "winback",
         "rule": "r2", "prize": "p500", "prize_type": "points", "points_delta": 500,
         "cost_cents": 500, "at_ms": ms(d0 + timedelta(days=20)),
         "recorded_ms": ms(d0 + timedelta(days=20)), "items": []},
        {**upgrade, "record_id": "x2", "kind": "cancellation", "user_id": "u2",
         "at_ms": ms(d0 + timedelta(days=12)), "recorded_ms": ms(d0 + timedelta(days=12)),
         "items": [coupon("c2")]},
        {**upgrade, "record_id": "r1", "kind": "redemption", "user_id": "u1",
         "order_id": "o9", "order_cents": 15000, "discount_cents": 2000,
         "at_ms": ms(d0 + timedelta(days=13)), "recorded_ms": ms(d0 + timedelta(days=13)),
         "items": [coupon("c1")]},
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

    budgets = {"upgrade": 100_000, "winback": None, "newbie": 5_000}
    rewards = reports.rewards_summary(backend, None, budgets)
    assert rewards["campaigns"] == [
        {"campaign": "upgrade", "budget_cents": 100_000, "spent_cents": 4000, "grants": 2,
         "cancellations": 1, "redemptions": 1, "discount_cents": 2000,
         "redeemed_order_cents": 15000, "points_granted": 0},
        {"campaign": "winback", "budget_cents": None, "spent_cents": 500, "grants": 1,
         "cancellations": 0, "redemptions": 0, "discount_cents": 0,
         "redeemed_order_cents": 0, "points_granted": 500},
        {"campaign": "newbie", "budget_cents": 5000, "spent_cents": 0, "grants": 0,
         "cancellations": 0, "redemptions": 0, "discount_cents": 0,
         "redeemed_order_cents": 0, "points_granted": 0},
    ]
    assert rewards["by_prize"] == {"coupon": 2, "points": 1}
    # A period filter keeps the records of its days only.
    early = reports.rewards_summary(backend, aipl.Period(d0, d0 + timedelta(days=10)), {})
    assert [(c["campaign"], c["grants"]) for c in early["campaigns"]] == [("upgrade", 1)]
    items = backend.query("SELECT item_ids, item_types FROM reward_grants FINAL WHERE record_id = 'g1'")
    assert items == [(["c1"], ["coupon"])]
    stored = backend.query(
        "SELECT scores FROM tier_changes FINAL WHERE user_id = 'u1' AND version = 2"
    )
    assert orjson.loads(stored[0][0]) == {"r": 5, "f": 4, "m": 5}


def test_records_from_the_tiering_and_reward_engines_are_archived(
    ctx: Context, archive: Archive
) -> None:
    """Contract: the producers' own record types, encoded as they publish them."""
    change = TierChange(
        user_id="u7", dimension="membership", old="ordinary", new="super", version=2, seq=5,
        reason="event", scores=ChangeScores(r=5, f=3, m=4), points=1200, repurchases=2,
        event_time="2026-03-02T12:30:00.250Z",
    )
    item = RewardItem(item_id="c-77", type="coupon", prize="c20", campaign="upgrade", rule="r1",
                      value_cents=2000, granted_ms=1_772_454_600_250)
    grant = RewardRecord(
        record_id="grant:r1:u7:tier:membership:v2", kind="grant", user_id="u7",
        at_ms=1_772_454_600_250, recorded_ms=1_772_454_601_000, items=[item], cost_cents=2000,
        campaign="upgrade", rule="r1", prize="c20", prize_type="coupon",
        trigger="tier:membership:v2",
    )
    topics = ctx.settings.topics
    batch = archive_directly(ctx, archive, [
        (topics.tier_changes, orjson.loads(msgspec.json.encode(change))),
        (topics.reward_grants, orjson.loads(reward_records.encode(grant))),
    ])
    assert not batch.skipped
    backend = archive.backend()
    assert backend.query(
        "SELECT dimension, old, new, version, seq, toUnixTimestamp64Milli(event_time), scores,"
        " points, repurchases FROM tier_changes"
    ) == [("membership", "ordinary", "super", 2, 5, 1_772_454_600_250,
           '{"r":5,"f":3,"m":4}', 1200, 2)]
    assert backend.query(
        "SELECT kind, campaign, prize_type, cost_cents, trigger, item_ids, item_values_cents,"
        " toUnixTimestamp64Milli(at) FROM reward_grants"
    ) == [("grant", "upgrade", "coupon", 2000, "tier:membership:v2", ["c-77"], [2000],
           1_772_454_600_250)]


# --- the archive consumer on real Kafka ---------------------------------------------------


def kafka_records(ctx: Context, events: list[dict]) -> list[tuple[str, bytes | None, bytes | None]]:
    """Events as producers send them: half single records, half per-user batch records."""
    out: list[tuple[str, bytes | None, bytes | None]] = []
    half = len(events) // 2
    for e in events[:half]:
        out.append((touch_topic(ctx, e), e["user_id"].encode(), orjson.dumps(e)))
    by_user: dict[str, list[dict]] = {}
    for e in events[half:]:
        by_user.setdefault(e["user_id"], []).append(e)
    for user, evs in by_user.items():
        for i in range(0, len(evs), 10):
            chunk = evs[i:i + 10]
            out.append((touch_topic(ctx, chunk[0]), user.encode(), orjson.dumps({"events": chunk})))
    return out


def garbage(ctx: Context) -> list[tuple[str, bytes | None, bytes | None]]:
    """Records ingest dead-letters; the archive must skip them, not stop on them."""
    topic = ctx.settings.topics.input("browse")
    return [
        (topic, b"u1", b"{not json"),
        (topic, b"u1", orjson.dumps({"type": "teleport", "user_id": "u1"})),
        (topic, b"u1", None),
        (ctx.settings.topics.tier_changes, b"u1", b"[]"),
    ]


def test_writer_stream_equals_batch_after_duplicates_and_replay(
    settings: Settings, tmp_path: Path
) -> None:
    ctx = archive_context(settings, tmp_path / "home")
    ensure_topics(ctx.settings)
    events = with_cart_removals(population(users=300, days=90, seed=21), seed=21)
    stream = with_duplicates(events, 0.1, seed=21)
    changes = [tier_change(e["user_id"], "aipl", None, "aware", "event", 1, e["ts"]) for e in events[:50]]
    tier_records = [
        (ctx.settings.topics.tier_changes, c["user_id"].encode(), orjson.dumps(c))
        for c in changes
    ]
    produced = produce(ctx, kafka_records(ctx, stream) + garbage(ctx) + tier_records * 2)

    days = sorted(event_day(e) for e in events)
    period = aipl.Period(days[0], days[-1])
    want = aipl_truth(events, period.start, period.end)[None]
    want_channels = aipl_truth(events, period.start, period.end, "channel")
    unique_users = {c["user_id"] for c in changes}

    def check(archive: Archive) -> None:
        backend = archive.backend()
        assert counts(aipl.funnel(backend, period).to_json()) == want
        got = aipl.breakdown(backend, "channel", period)
        assert {k: counts(f.to_json()) for k, f in got.items()} == want_channels
        unique = {(e["user_id"], e["event_id"]) for e in events}
        assert backend.query("SELECT count() FROM touch_events FINAL")[0][0] == len(unique)
        assert reports.tier_distribution(backend, None) == {"aipl": {"aware": len(unique_users)}}

    archive = Archive(ctx.settings, ctx.config.archive)
    try:
        with running_archive(ctx, archive) as run:
            wait_until(lambda: archive_lag(ctx) == 0, "the archive caught up")
            status = run.status()
        assert status["records"] == produced
        assert status["skipped"][f"{ctx.settings.topics.tier_changes}:invalid"] == 1
        assert sum(n for k, n in status["skipped"].items() if k.startswith("touch:")) == 3
        check(archive)

        # Replay everything from the start as a fresh consumer group (as after
        # losing the committed offsets): every row arrives a second time.
        replay = with_archive_settings(ctx, group_suffix="-archive-replay")
        with running_archive(replay, archive) as again:
            wait_until(lambda: archive_lag(replay) == 0, "the replay caught up")
            assert again.status()["records"] == produced
        check(archive)
    finally:
        drop_if_server(ctx, archive)
        archive.close()


def test_writer_holds_back_while_clickhouse_is_unreachable_and_catches_up(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tierflow.archive")
    base = archive_context(settings, tmp_path / "home")
    ctx = with_archive_settings(base, batch_max_records=50, retry_initial_ms=20, retry_max_ms=200)
    ensure_topics(ctx.settings)
    events = population(users=60, days=30, seed=31)
    total = produce(ctx, [(touch_topic(ctx, e), e["user_id"].encode(), orjson.dumps(e))
                          for e in events])
    assert total > 50

    # 1. A ClickHouse server that does not answer (nothing listens on the port).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = Context(replace(ctx.settings, clickhouse_url=f"http://tf:s3cret@127.0.0.1:{port}"),
                   ctx.config)
    unreachable = Archive(down.settings, down.config.archive)
    with running_archive(down, unreachable) as run:
        wait_until(lambda: run.status()["retries"] >= 3, "the writer retried")
        status = run.status()
        assert status["state"] == "holding"
        assert status["held_records"] == 50  # one batch, never more
        assert archive_lag(down) == total  # nothing committed, nothing lost
    unreachable.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("holding 50 records uncommitted" in w and f"127.0.0.1:{port}" in w for w in warnings)
    assert not any("s3cret" in w for w in warnings)

    # 2. Embedded chDB whose directory another process owns, released mid-run: the
    # writer stands by outside the archive group, then takes over and catches up.
    ctx = Context(replace(ctx.settings, clickhouse_url=None), ctx.config)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_CHDB, str(ctx.settings.home)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"holding"
        archive = Archive(ctx.settings, ctx.config.archive)
        with running_archive(ctx, archive) as run:
            wait_until(lambda: run.status()["state"] == "standby", "the writer stands by")
            assert f"in use by another process (pid {holder.pid})" in run.status()["last_error"]
            assert archive_lag(ctx) == total
            holder.communicate(b"release\n", timeout=60)
            wait_until(lambda: archive_lag(ctx) == 0, "the archive caught up")
            assert run.status()["state"] == "running"
        days = sorted(event_day(e) for e in events)
        want = aipl_truth(events, days[0], days[-1])[None]
        assert counts(aipl.report(archive.backend(), None, None)) == want
        archive.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# Opens the archive in a second process and keeps it until told to let go.
HOLD_CHDB = """
import sys
from dataclasses import replace
from pathlib import Path
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.config.settings import Settings
settings = replace(Settings.from_env(), home=Path(sys.argv[1]), clickhouse_url=None)
archive = Archive(settings, load_config().archive)
archive.backend()
print("holding", flush=True)
sys.stdin.readline()
archive.close()
"""


# --- the AIPL example in docs/domain.md -------------------------------------------------------

DOMAIN_RATES = {"a_to_i": 0.12, "i_to_p": 0.31, "p_to_l": 0.45}


def test_domain_example_rates_in_cli_and_dashboard_json(tmp_path: Path) -> None:
    ctx = archive_context(Settings.from_env(), tmp_path / "home")
    start = datetime.now(UTC).date() - timedelta(days=60)
    events = list(domain_example_population(start))
    archive = Archive(ctx.settings, ctx.config.archive)
    archive_directly(ctx, archive, ((touch_topic(ctx, e), e) for e in events))
    archive.close()  # embedded chDB: one process at a time; the CLI needs it now
    expected = {"awareness": 50_000, "interest": 6_000, "purchase": 1_860, "loyalty": 837,
                "rates": DOMAIN_RATES}
    port = free_port()
    env = cli_env(ctx, tmp_path, TIERFLOW_WEB_PORT=str(port))
    period = ["--from", start.isoformat(), "--to", (start + timedelta(days=27)).isoformat()]

    for args in ([], period):
        shown = tierflow(env, "aipl", "--json", *args)
        assert shown.returncode == 0, shown.stderr.decode()
        assert orjson.loads(shown.stdout) == expected
    text = tierflow(env, "aipl")
    assert "A->I  12.00%" in text.stdout.decode() and "P->L  45.00%" in text.stdout.decode()

    with dashboard_process(env, port) as base:
        status, doc = get_json(f"{base}/api/aipl?from={start}")
        assert status == 200 and doc == expected
        # The dashboard process now holds the chDB directory: the CLI reads the
        # same numbers through its JSON API instead.
        shown = tierflow(env, "aipl", "--json")
        assert shown.returncode == 0, shown.stderr.decode()
        assert orjson.loads(shown.stdout) == expected
        migrated = tierflow(env, "migrate")
        assert migrated.returncode == 0, migrated.stderr.decode()
        if not ctx.settings.clickhouse_url:
            assert b"owns the archive and migrated it: schema versions 001, 002" in migrated.stdout
        # A second dashboard serves the same numbers, reading through the first.
        with dashboard_process(env, free_port()) as second:
            status, doc = get_json(f"{second}/api/aipl?from={start}")
            assert status == 200 and doc == expected


# --- inside the worker --------------------------------------------------------------------

def test_worker_archives_and_serves_the_dashboard(settings: Settings, tmp_path: Path) -> None:
    ctx = archive_context(settings, tmp_path / "home")
    ensure_topics(ctx.settings)
    port = free_port()
    env = cli_env(ctx, tmp_path, TIERFLOW_WEB_PORT=str(port))
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "tierflow.pipeline.cli.main", "worker", "--loglevel", "warning"],
                              env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        events = population(users=80, days=40, seed=41)
        produce(ctx, [(touch_topic(ctx, e), e["user_id"].encode(), orjson.dumps(e))
                      for e in events])
        wait_until(lambda: archive_lag(ctx) == 0, "the worker's archive caught up", timeout=180)
        days = sorted(event_day(e) for e in events)
        want = aipl_truth(events, days[0], days[-1])[None]
        wait_until(lambda: get_json(f"http://127.0.0.1:{port}/api/archive/status")[0] == 200,
                   "the worker's web server answers")
        status, doc = get_json(f"http://127.0.0.1:{port}/api/aipl")
        assert status == 200 and counts(doc) == want
        _, state = get_json(f"http://127.0.0.1:{port}/api/archive/status")
        assert state["migrations"] == [m.version for m in load_migrations()]
        assert state["writer"]["state"] == "running"
        shown = tierflow(env, "aipl", "--json")  # the worker holds chDB: read through its API
        assert shown.returncode == 0, shown.stderr.decode()
        assert counts(orjson.loads(shown.stdout)) == want
    finally:
        worker.terminate()
        worker.wait(60)
        log.close()
    # Stopped cleanly, it let go of the archive.
    shown = tierflow(env, "aipl", "--json")
    assert shown.returncode == 0, shown.stderr.decode() + (tmp_path / "worker.log").read_text()
    assert counts(orjson.loads(shown.stdout)) == want
