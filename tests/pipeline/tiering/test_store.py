"""The Redis tier store against a real Redis: exact versions and counts under
replays, duplicated calls and crashes between steps; the decay schedule with an
injected clock; the means-shift sweep; the outbox; the tier.changes contract."""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator

import jsonschema
import msgspec
import pytest
import redis

from tests.fixtures.paths import ROOT
from tierflow.pipeline.config.domain import Config, load_config
from tierflow.pipeline.ingest.validate import ValidEvent
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.state.summary import DAY_MS, UserKeys, encode
from tierflow.pipeline.tiering.grace import apply_grace
from tierflow.pipeline.tiering.keys import SNAPSHOT_KEY, TierKeys
from tierflow.pipeline.tiering.rfm import DIMENSIONS, quantile_cuts
from tierflow.pipeline.tiering.store import Delta, Result, TierStore
from tierflow.schemas.events import Browse, Interaction, Item, Purchase
from tierflow.schemas.tier_changes import TierChange

SCHEMA = json.loads((ROOT / "schemas" / "tier.changes.json").read_text())
DAY0 = 20_000  # 2024-10-04
T0 = DAY0 * DAY_MS + 12 * 3_600_000  # noon, UTC


def config_with(shards: int = 4, **tiering: object) -> Config:
    """Defaults with some tiering sections replaced; population keys over `shards` tags."""
    base = load_config()
    tiering.setdefault("population", msgspec.structs.replace(base.tiering.population, shards=shards))
    return msgspec.structs.replace(base, tiering=msgspec.structs.replace(base.tiering, **tiering))


class World:
    """Events into the real state store, tiers out of the real tier store."""

    def __init__(self, url: str, config: Config) -> None:
        self.client: redis.Redis = connect(url)
        self.config = config
        self.state = StateStore(self.client, config.state.retention_days)
        self.tiers = TierStore(self.client, config)
        self.offsets = itertools.count()
        self.ids = itertools.count()

    def purchase(self, user: str, ts: int, yuan: float = 100.0, sku: str = "TP", qty: int = 1) -> ValidEvent:
        n = next(self.ids)
        event = Purchase(event_id=f"p{n}", user_id=user, ts=ts, channel="app", order_id=f"o{n}",
                         amount=yuan * qty, currency="CNY",
                         items=[Item(sku=sku, category="snacks", qty=qty, price=yuan)])
        return ValidEvent(event, ts)

    def browse(self, user: str, ts: int) -> ValidEvent:
        return ValidEvent(Browse(event_id=f"b{next(self.ids)}", user_id=user, ts=ts, channel="app",
                                 page="home"), ts)

    def interact(self, user: str, ts: int, kind: str) -> ValidEvent:
        return ValidEvent(Interaction(event_id=f"i{next(self.ids)}", user_id=user, ts=ts,
                                      channel="app", kind=kind), ts)

    def apply(self, events: list[ValidEvent]) -> None:
        groups: dict[tuple[str, str], list[list[object]]] = defaultdict(list)
        for item in events:
            groups[(item.event.user_id, "touch:0")].append(encode(item.event, item.ts_ms, next(self.offsets)))
        self.state.apply(groups)

    def ingest(self, events: list[ValidEvent], now: int):
        self.apply(events)
        return self.tiers.on_batch(events, now)

    def records(self, user: str) -> list[TierChange]:
        return self.tiers.outbox.pending([user]).get(user, [])


@pytest.fixture
def world(redis_url: str) -> Iterator[World]:
    w = World(redis_url, config_with())
    yield w
    w.client.close()


def recount(w: World) -> dict[str, int]:
    """Population counts from scratch, from every user's stored tier hash."""
    counts: Counter[str] = Counter()
    for key in w.client.scan_iter(match="{u:*}:tier", count=1000):
        tier = w.client.hgetall(key)
        counts["users"] += 1
        for dim in DIMENSIONS:
            if f"s:{dim}" in tier:
                counts[f"{dim}:{tier[f's:{dim}']}"] += 1
        for dim in ("segment", "lifecycle", "membership", "aipl"):
            if f"v:{dim}" in tier:
                counts[f"{dim}:{tier[f'v:{dim}']}"] += 1
    return dict(counts)


def assert_population_consistent(w: World) -> None:
    assert {k: v for k, v in w.tiers.stats.counts().items() if v} == recount(w)
    holders = {(dim, s): set(w.tiers.stats.users_with_score(dim, s)) for dim in DIMENSIONS for s in range(1, 6)}
    due = dict(w.tiers.schedule.due(2**62, 10**6))
    for key in w.client.scan_iter(match="{u:*}:tier", count=1000):
        user = key[len("{u:"):-len("}:tier")]
        tier = w.client.hgetall(key)
        for dim in DIMENSIONS:
            held = {s for s in range(1, 6) if user in holders[(dim, s)]}
            assert held == ({int(tier[f"s:{dim}"])} if f"s:{dim}" in tier else set())
        assert due.get(user) == (int(tier["nb"]) if "nb" in tier else None)
        raw = json.loads(tier.get("raw", "null"))
        shard = w.tiers.shards.holding(user)
        for dim in DIMENSIONS:
            assert w.client.zscore(shard.raw_values(dim), user) == (None if raw is None else float(raw[dim]))
        # Deltas still listed are ones the shard applied (cleared by the user's next commit).
        applied = int(w.client.hget(w.tiers.shards.holding(user).applied, user) or 0)
        assert all(int(seq) <= applied for seq in w.client.hkeys(TierKeys.of(user).pending))


def assert_versions_gapless(records: list[TierChange]) -> None:
    by_dim: dict[str, list[TierChange]] = defaultdict(list)
    for r in records:
        by_dim[r.dimension].append(r)
    for dim, rs in by_dim.items():
        assert [r.version for r in rs] == list(range(1, len(rs) + 1)), dim
        for before, after in itertools.pairwise(rs):
            assert after.old == before.new, dim
    assert [r.seq for r in records] == list(range(1, len(records) + 1))


# --- replay, versions ----------------------------------------------------------------------------


def test_replaying_the_same_evaluation_emits_nothing(world: World) -> None:
    batch = [world.browse("u1", T0 - 1000), world.purchase("u1", T0, 120.0)]
    first = world.ingest(batch, T0)
    assert [(r.dimension, r.old, r.new, r.version, r.reason) for r in first.appended] == [
        ("segment", None, "general_win_back", 1, "event"),
        ("lifecycle", None, "first_purchase", 1, "event"),
        ("membership", None, "ordinary", 1, "event"),
        ("aipl", None, "purchase", 1, "event"),
    ]
    tier_before = world.client.hgetall(TierKeys.of("u1").tier)
    counts_before = world.tiers.stats.counts()

    # The batch replayed after a crash (the state store skips it), and evaluated again.
    again = world.ingest(batch, T0)
    assert again.appended == []
    assert world.tiers.evaluate_users(["u1"], T0, "event").appended == []
    assert world.client.hgetall(TierKeys.of("u1").tier) == tier_before
    assert world.tiers.stats.counts() == counts_before
    assert len(world.records("u1")) == 4
    # Users with unacknowledged records come back with every evaluation, for the publisher.
    assert again.outbox == {"u1": 4}


def test_versions_increase_by_one_per_dimension_with_no_gaps(world: World) -> None:
    t = T0
    world.ingest([world.browse("u1", t)], t)
    world.ingest([world.interact("u1", t + 1, "favorite")], t + 1)
    for _ in range(4):
        t += DAY_MS
        world.ingest([world.purchase("u1", t, 2000.0)], t)
    records = world.records("u1")
    assert_versions_gapless(records)
    lifecycle = [(r.old, r.new) for r in records if r.dimension == "lifecycle"]
    assert lifecycle == [(None, "new"), ("new", "first_purchase"), ("first_purchase", "repeat"),
                         ("repeat", "vip")]
    aipl = [r.new for r in records if r.dimension == "aipl"]
    assert aipl == ["aware", "interest", "purchase", "loyalty"]
    assert world.tiers.versions("u1")["lifecycle"] == 4
    # vip came with the third purchase (2 repurchases, 6000 yuan); the fourth changed no tier.
    assert (records[-1].new, records[-1].repurchases, records[-1].points) == ("vip", 2, 6002)
    for r in records:
        jsonschema.validate(msgspec.to_builtins(r), SCHEMA)
    assert_population_consistent(world)


def test_change_records_match_the_schema_and_the_record_type(world: World) -> None:
    world.ingest([world.purchase("u1", T0)], T0)
    raw = world.client.lrange(TierKeys.of("u1").outbox, 0, -1)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    for text in raw:
        doc = json.loads(text)
        assert not list(validator.iter_errors(doc))
        assert msgspec.to_builtins(msgspec.json.decode(text, type=TierChange)) == doc
    # And the two reject the same broken records.
    doc = json.loads(raw[0])
    for broken in ({**doc, "version": 0}, {**doc, "reason": "whim"},
                   {**doc, "scores": {"r": 6, "f": 1, "m": 1}}, {**doc, "event_time": "yesterday"},
                   {k: v for k, v in doc.items() if k != "seq"}):
        assert not validator.is_valid(broken)
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(json.dumps(broken), type=TierChange)
    # And both accept a field a newer producer adds (forward compatibility).
    newer = {**doc, "extra": 1}
    assert validator.is_valid(newer)
    assert msgspec.to_builtins(msgspec.json.decode(json.dumps(newer), type=TierChange)) == doc


# --- exact counts under a random history ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_counts_equal_a_recount_after_random_updates_duplicates_and_crashes(redis_url: str, seed: int) -> None:
    rng = random.Random(seed)
    w = World(redis_url, config_with(shards=rng.choice([1, 3, 16])))
    users = [f"u{i}" for i in range(12)]
    now = T0
    history: list[list[ValidEvent]] = []
    for _ in range(80):
        now += rng.choice([0, 3_600_000, DAY_MS, 7 * DAY_MS])
        step = rng.random()
        if step < 0.5:
            user = rng.choice(users)
            if rng.random() < 0.6:
                spent = rng.choice([10.0, 300.0, 1500.0])
                batch = [w.purchase(user, now - rng.randrange(0, 3 * DAY_MS), spent)]
            else:
                batch = [w.browse(user, now)]
            history.append(batch)
            w.ingest(batch, now)
        elif step < 0.6 and history:
            # A replayed batch: the state ignores it, tiers must not double count.
            w.ingest(rng.choice(history), now)
        elif step < 0.75:
            # A crash after commit, before the population was updated: deltas stay pending.
            crash_before_flush(w, rng.sample(users, 3), now, applied_half=rng.random() < 0.5)
        elif step < 0.85:
            # The timer, and a snapshot with its sweep.
            w.tiers.tick(now)
        else:
            # Duplicated calls: the same users evaluated twice over.
            chosen = rng.sample(users, 4)
            w.tiers.evaluate_users(chosen + chosen, now, "config_change")
            w.tiers.evaluate_users(chosen, now, "config_change")
    # Whatever re-triggers evaluation flushes what crashes left behind.
    w.tiers.evaluate_users(users, now, "event")
    assert_population_consistent(w)
    for user in users:
        assert_versions_gapless(w.records(user))


def crash_before_flush(w: World, users: list[str], now: int, *, applied_half: bool) -> list[Delta]:
    """Run an evaluation round (commit) and die before the population deltas are
    applied, or after applying some of them twice (a crash before clearing)."""
    deltas: list[Delta] = []
    w.tiers._round(users, now, "event", {}, {}, Result(), deltas)
    if applied_half:
        half = deltas[: len(deltas) // 2]
        w.tiers._flush(half)
        w.tiers._flush(half)
    return deltas


def test_a_crash_between_commit_and_population_update_is_counted_once(world: World) -> None:
    world.apply([world.purchase("u1", T0, 3000.0)])
    deltas = crash_before_flush(world, ["u1"], T0, applied_half=False)
    assert deltas and world.tiers.stats.counts() == {}
    # Recovery: the replay evaluates again; nothing new to emit, the pending delta is applied once.
    replay = world.tiers.evaluate_users(["u1"], T0, "event")
    assert replay.appended == []
    world.tiers._flush(deltas)  # the dead process's deltas arriving late change nothing
    assert world.tiers.stats.counts()["r:5"] == 1
    assert world.tiers.stats.counts()["users"] == 1
    assert_population_consistent(world)


def test_an_evaluation_of_a_state_that_moved_on_is_refused_and_redone(world: World) -> None:
    world.apply([world.purchase("u1", T0)])
    loaded, snapshot = world.tiers._load(["u1"], {})
    stale = world.tiers._evaluate("u1", loaded["u1"], snapshot.population, T0)
    world.apply([world.purchase("u1", T0 + 1), world.purchase("u1", T0 + 2)])
    pipe = world.client.pipeline(transaction=False)
    world.tiers._commit(pipe, "u1", loaded["u1"], apply_grace(stale, {}, T0, world.config.tiering), snapshot, "event",
                        T0, None)
    [(status, appended, _pending, _outbox)] = pipe.execute()
    assert (status, appended) == ("stale", [])
    assert world.records("u1") == []
    result = world.tiers.evaluate_users(["u1"], T0 + 2, "event")
    assert result.evaluations["u1"].lifecycle.repurchases == 2


def test_time_never_goes_back_for_a_user(world: World) -> None:
    world.apply([world.purchase("u1", T0)])
    world.tiers.evaluate_users(["u1"], T0 + 20 * DAY_MS, "time_decay")
    late = world.tiers.evaluate_users(["u1"], T0, "event")  # a worker with a lagging clock
    assert late.evaluations["u1"].as_of_ms == T0 + 20 * DAY_MS
    assert late.appended == []


def test_an_evaluation_against_an_older_snapshot_than_the_users_last_is_refused(world: World) -> None:
    world.ingest([world.purchase("u1", T0)], T0)
    loaded, old_snapshot = world.tiers._load(["u1"], {})
    world.tiers.stats.snapshot_means(T0)
    world.tiers.sweep(T0)
    world.tiers.evaluate_users(["u1"], T0, "means_shift")  # committed against the new snapshot
    e = world.tiers._evaluate("u1", loaded["u1"], old_snapshot.population, T0 + 1)
    pipe = world.client.pipeline(transaction=False)
    world.tiers._commit(pipe, "u1", loaded["u1"], apply_grace(e, {}, T0 + 1, world.config.tiering), old_snapshot,
                        "event", T0 + 1, None)
    [(status, *_)] = pipe.execute()
    assert status == "stale"


def test_preview_evaluates_any_instant_without_committing(world: World) -> None:
    world.ingest([world.purchase("u1", T0)], T0)
    before = world.client.hgetall(TierKeys.of("u1").tier)
    back = world.tiers.preview("u1", T0 - DAY_MS)
    assert back is not None and back.scores is None  # nothing bought yet back then
    ahead = world.tiers.preview("u1", T0 + 40 * DAY_MS)
    assert ahead is not None and ahead.scores.r == 1
    assert world.client.hgetall(TierKeys.of("u1").tier) == before
    assert world.tiers.preview("nobody", T0) is None


def test_reevaluating_everyone_under_a_new_config_emits_config_changes_once(redis_url: str) -> None:
    w = World(redis_url, config_with())
    for user, yuan in (("a", 2500.0), ("b", 300.0), ("c", 10.0)):
        w.ingest([w.purchase(user, T0, yuan)], T0)
    w.tiers.tick(T0)
    before = {u: w.tiers.stored(u).segment for u in "abc"}
    # Stricter money thresholds: everyone is M=1 now, so nobody stands out on M.
    base = load_config().tiering
    stricter = msgspec.structs.replace(base.monetary, thresholds=[3000.0, 5000.0, 10000.0, 20000.0])
    w2 = World(redis_url, config_with(monetary=stricter))
    done = w2.tiers.reevaluate_all(w2.state.users(), T0 + 1000)
    after = {u: w2.tiers.stored(u).segment for u in "abc"}
    # Everyone bought today, so nobody is above the R mean either.
    assert before == {"a": "important_win_back", "b": "general_win_back", "c": "general_win_back"}
    assert after == dict.fromkeys("abc", "general_win_back")
    assert [(r.user_id, r.old, r.new, r.reason) for r in done.appended if r.dimension == "segment"] == [
        ("a", "important_win_back", "general_win_back", "config_change")
    ]
    assert w2.tiers.stats.counts()["m:1"] == 3
    assert w2.tiers.reevaluate_all(w2.state.users(), T0 + 2000).appended == []
    assert "a" in w2.tiers.outbox.users(10)
    assert_population_consistent(w2)


def test_a_due_user_whose_state_is_gone_leaves_the_schedule(world: World) -> None:
    world.ingest([world.purchase("u1", T0)], T0)
    nb = dict(world.tiers.schedule.due(2**62, 10))["u1"]
    world.client.delete(*UserKeys.of("u1").as_list())
    world.tiers.tick(nb)
    assert world.tiers.schedule.due(2**62, 10) == []


# --- time decay ------------------------------------------------------------------------------------


def test_due_returns_users_when_their_boundary_passes_and_decay_moves_the_segment(redis_url: str) -> None:
    # One snapshot only, so the means stay put while R decays.
    base = load_config().tiering
    world = World(redis_url, config_with(
        population=msgspec.structs.replace(base.population, snapshot_interval_ms=10**12, shards=4)))
    # The clock is injected: every call is given its instant.
    # Two buyers: "old" bought 100 days ago (R=1), "lapse" buys today (R=5); mean R is 3.
    batch = [world.purchase("old", T0 - 100 * DAY_MS), world.purchase("lapse", T0)]
    world.ingest(batch, T0)
    tick = world.tiers.tick(T0)
    assert tick.shift is not None and tick.shift.population.mean("r") == 3
    assert [(r.user_id, r.new, r.reason) for r in tick.swept.appended] == [
        ("lapse", "general_develop", "means_shift")
    ]
    # R=5 until day +5, R=4 from day +6 (still above the mean), R=3 from day +11 (low).
    first = (DAY0 + 6) * DAY_MS
    assert world.tiers.schedule.due(first - 1, 10) == []
    assert world.tiers.schedule.due(first, 10) == [("lapse", first)]
    step = world.tiers.tick(first)
    assert step.decayed.evaluations["lapse"].scores.r == 4
    assert step.decayed.appended == []
    second = (DAY0 + 11) * DAY_MS
    assert world.tiers.schedule.due(second - 1, 10) == []
    drop = world.tiers.tick(second + 5_000)  # the timer runs a little late
    [change] = [r for r in drop.decayed.appended if r.dimension == "segment"]
    assert (change.user_id, change.old, change.new, change.reason) == (
        "lapse", "general_develop", "general_win_back", "time_decay")
    assert change.event_time == "2024-10-15T00:00:00Z"
    assert change.scores.r == 3
    assert_versions_gapless(world.records("lapse"))
    assert_population_consistent(world)


def test_the_paid_tier_starts_with_the_purchase_and_expires_on_time(world: World) -> None:
    cfg = world.config.tiering.membership.paid
    world.ingest([world.purchase("vip", T0, 888.0, sku=cfg.sku)], T0)
    stored = world.tiers.stored("vip")
    until = T0 + cfg.term_days * DAY_MS
    assert stored is not None and stored.membership.tier == cfg.name
    assert stored.membership.paid_until_ms == until
    assert stored.lifecycle.stage == "vip"
    assert world.tiers.versions("vip")["membership"] == 1
    # The membership order is recorded once however often the batch is replayed.
    batch = [world.purchase("vip", T0 + 1000, 888.0, sku=cfg.sku)]
    world.ingest(batch, T0 + 1000)
    world.tiers.on_batch(batch, T0 + 1000)
    assert world.tiers.stored("vip").membership.paid_until_ms == until + cfg.term_days * DAY_MS
    expiry = until + cfg.term_days * DAY_MS
    # Recency thresholds and the window pass first (nothing to see in membership).
    while due := world.tiers.schedule.due(expiry - 1, 10):
        world.tiers.tick(due[0][1])
    assert world.tiers.stored("vip").membership.tier == cfg.name
    assert dict(world.tiers.schedule.due(expiry, 10))["vip"] == expiry
    tick = world.tiers.tick(expiry)
    membership = [r for r in tick.decayed.appended if r.dimension == "membership"]
    assert [(r.old, r.new, r.reason) for r in membership] == [(cfg.name, "super", "time_decay")]
    assert tick.decayed.evaluations["vip"].membership.offer_price == 88


# --- means shift and quantiles -------------------------------------------------------------------------


def test_a_means_shift_sweep_re_evaluates_exactly_the_users_whose_high_low_flips(world: World) -> None:
    # M scores: a at 5 (2000 yuan), b at 3 (500), c, d at 1.
    for user, yuan in (("a", 2000.0), ("b", 500.0), ("c", 10.0), ("d", 10.0)):
        world.ingest([world.purchase(user, T0, yuan)], T0)
    first = world.tiers.tick(T0)
    assert first.shift is not None and first.shift.population.mean("m") == 2.5
    high_m = {u for u, e in world.tiers.evaluate_users("abcd", T0, "event").evaluations.items()
              if e.high.m}
    assert high_m == {"a", "b"}
    # Two more big spenders lift the M mean above 3: b's 3 turns low.
    later = T0 + 1000
    for user in ("e", "f"):
        world.ingest([world.purchase(user, later, 2000.0)], later)
    assert world.tiers.tick(later).shift is None  # the interval has not passed
    when = T0 + world.config.tiering.population.snapshot_interval_ms
    shift = world.tiers.tick(when)
    assert shift.shift is not None and shift.shift.flips["m"] == [3]
    assert shift.swept.evaluated == 1
    assert [(r.user_id, r.dimension, r.reason) for r in shift.swept.appended] == [
        ("b", "segment", "means_shift")
    ]
    assert world.client.hget(SNAPSHOT_KEY, "sweep") is None
    report = world.tiers.report()
    assert sum(report["segments"].values()) == report["scored_users"] == 6
    assert report["means"]["m"] == pytest.approx(20 / 6)


def test_an_interrupted_sweep_is_finished_by_the_next_tick(world: World) -> None:
    for user, yuan in (("a", 2000.0), ("b", 10.0)):
        world.ingest([world.purchase(user, T0, yuan)], T0)
    world.tiers.stats.snapshot_means(T0)  # snapshot taken, then the process died before sweeping
    assert world.client.hget(SNAPSHOT_KEY, "sweep") is not None
    swept = world.tiers.tick(T0 + 1)
    assert {r.user_id for r in swept.swept.appended} == {"a"}
    assert world.client.hget(SNAPSHOT_KEY, "sweep") is None


def test_quantile_mode_scores_by_population_quintile(redis_url: str) -> None:
    base = load_config().tiering
    config = config_with(shards=3, frequency=msgspec.structs.replace(base.frequency, mode="quantiles"))
    w = World(redis_url, config)
    counts = {f"q{i}": i + 1 for i in range(10)}
    for user, n in counts.items():
        w.ingest([w.purchase(user, T0 - k * 3_600_000) for k in range(n)], T0)
    shift = w.tiers.tick(T0)
    assert shift.shift is not None
    assert shift.shift.population.cuts["f"] == quantile_cuts(list(counts.values()))
    scores = {u: w.tiers.stored(u).scores.f for u in counts}
    assert scores == {f"q{i}": i // 2 + 1 for i in range(10)}


# --- time-based work in bounded slices ------------------------------------------------------------


def sliced(redis_url: str, *, shards: int, slice_users: int, snapshot_ms: int | None = None) -> World:
    """A world whose timer takes at most `slice_users` users a tick."""
    base = load_config().tiering
    population = msgspec.structs.replace(
        base.population, shards=shards, snapshot_interval_ms=snapshot_ms or base.population.snapshot_interval_ms)
    return World(redis_url, config_with(
        decay=msgspec.structs.replace(base.decay, due_batch=slice_users), population=population))


def test_a_due_set_larger_than_a_slice_is_worked_off_over_several_ticks_each_user_once(redis_url: str) -> None:
    w = sliced(redis_url, shards=4, slice_users=5, snapshot_ms=10**12)
    users = [f"u{i:02d}" for i in range(23)]
    w.ingest([w.purchase(user, T0) for user in users], T0)
    w.tiers.tick(T0)  # the first snapshot: everyone alike, nobody flips
    first = (DAY0 + 6) * DAY_MS  # R=5 -> R=4 for everyone
    assert len(w.tiers.schedule.due(first, 100)) == 23
    decayed: list[str] = []
    ticks = 0
    while w.tiers.schedule.due(first, 1):
        step = w.tiers.tick(first)
        assert step.decayed.evaluated <= 5
        decayed += step.decayed.evaluations
        ticks += 1
    assert ticks == 5
    assert sorted(decayed) == users  # nothing lost, nobody twice
    assert {w.tiers.stored(user).scores.r for user in users} == {4}
    assert_population_consistent(w)


def test_a_sweep_larger_than_a_slice_finishes_over_several_ticks_each_change_once(redis_url: str) -> None:
    # Spread over 16 shards, so a 5-user slice ends after a few shards' sets.
    w = sliced(redis_url, shards=16, slice_users=5)
    other = TierStore(w.client, w.config)  # a second worker sweeping the same snapshot
    big = [f"big{i:02d}" for i in range(30)]
    small = [f"small{i:02d}" for i in range(30)]
    w.ingest([w.purchase(user, T0, 2000.0) for user in big] + [w.purchase(user, T0, 10.0) for user in small], T0)
    assert 5 in w.tiers.stats.snapshot_means(T0).flips["m"]  # M=5 is above the new mean
    swept: list[str] = []
    changed: list[str] = []
    slices = 0
    while w.client.hget(SNAPSHOT_KEY, "sweep") is not None:
        # The workers take turns; now and then both take the same slice and one's record loses.
        racing = slices % 3 == 2
        rival = other.stats.sweep_slice(5) if racing else None
        store = (w.tiers, other)[slices % 2]
        result = store.sweep_slice(T0 + 1)
        if rival is not None:
            other.evaluate_users(rival.users, T0 + 1, "means_shift")
            assert not other.stats.advance(rival)  # the sweep moved on meanwhile
        assert result.evaluated <= 5 + 8  # one SCAN page past the bound at most
        swept += result.evaluations
        changed += [r.user_id for r in result.appended if r.dimension == "segment"]
        slices += 1
    assert slices > 3
    assert set(swept) == set(big)
    assert sorted(changed) == big  # each flipped user's change recorded once
    for user in big:
        [record] = [r for r in w.records(user) if r.reason == "means_shift"]
        assert record.new is not None and record.new.startswith("important_")
    assert_population_consistent(w)


def test_a_new_snapshot_mid_sweep_starts_the_merged_sweep_from_the_beginning(redis_url: str) -> None:
    w = sliced(redis_url, shards=16, slice_users=3)
    big = [f"big{i:02d}" for i in range(20)]
    w.ingest([w.purchase(user, T0, 2000.0) for user in big] + [w.purchase("low", T0, 10.0)], T0)
    w.tiers.stats.snapshot_means(T0)
    half = w.tiers.sweep_slice(T0)
    assert 0 < half.evaluated < len(big)
    assert w.client.hget(SNAPSHOT_KEY, "sweep_at")
    w.tiers.stats.snapshot_means(T0 + 1)  # nothing moved, but the unfinished sweep is kept
    assert w.client.hget(SNAPSHOT_KEY, "sweep_at") is None
    assert w.tiers.sweep(T0 + 1).evaluated >= len(big)
    assert w.client.hget(SNAPSHOT_KEY, "sweep") is None
    # Everyone the sweep names was evaluated against the newest snapshot.
    assert {w.client.hget(TierKeys.of(user).tier, "pop") for user in big} == {
        w.client.hget(SNAPSHOT_KEY, "taken_ms")}


def test_applied_deltas_are_cleared_by_the_users_next_commit(world: World) -> None:
    world.ingest([world.purchase("u1", T0), world.purchase("u2", T0)], T0)
    assert world.client.hlen(TierKeys.of("u1").pending) == 1  # applied, not yet cleared
    world.tiers.evaluate_users(["u2"], T0, "event")
    assert world.client.hlen(TierKeys.of("u1").pending) == 1  # only u1's own commit clears it
    world.tiers.evaluate_users(["u1"], T0, "event")
    assert world.client.hlen(TierKeys.of("u1").pending) == 0


def test_applied_deltas_past_the_remembered_users_are_cleared_by_the_next_read(redis_url: str) -> None:
    config = config_with()
    w = World(redis_url, msgspec.structs.replace(
        config, worker=msgspec.structs.replace(config.worker, tier_clears_users=1)))
    w.ingest([w.purchase("u1", T0), w.purchase("u2", T0)], T0)
    w.tiers.evaluate_users(["u3"], T0, "event")  # u1 applied first: the oldest of two, one remembered
    assert w.client.hlen(TierKeys.of("u1").pending) == 0
    assert w.client.hlen(TierKeys.of("u2").pending) == 1
    w.client.close()


# --- outbox ---------------------------------------------------------------------------------------


def test_outbox_ack_drops_only_what_was_published(world: World) -> None:
    world.ingest([world.browse("u1", T0)], T0)
    world.ingest([world.purchase("u2", T0)], T0)
    assert set(world.tiers.outbox.users(100)) == {"u1", "u2"}
    u1 = world.records("u1")
    assert world.tiers.outbox.ack({"u1": u1[-1].seq}) == len(u1)
    assert world.tiers.outbox.ack({"u1": u1[-1].seq}) == 0  # idempotent
    assert world.tiers.outbox.users(100) == ["u2"]
    # u2 publishes its first two, then changes again before acknowledging.
    u2 = world.records("u2")
    world.ingest([world.purchase("u2", T0 + DAY_MS)], T0 + DAY_MS)
    assert world.tiers.outbox.ack({"u2": u2[1].seq}) == 2
    left = world.records("u2")
    # Its two unpublished first-purchase records remain, then the repeat purchase's two.
    assert [r.seq for r in left] == [3, 4, 5, 6] and len(u2) == 4
    assert [(r.dimension, r.new) for r in left[2:]] == [("lifecycle", "repeat"), ("aipl", "loyalty")]
    assert world.tiers.outbox.users(100) == ["u2"]
    world.tiers.outbox.ack({"u2": left[-1].seq})
    assert world.tiers.outbox.users(100) == []


# --- the example consumer, over real Kafka -----------------------------------------------------------


def test_example_marketing_consumer_acts_once_per_change(
    settings, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from confluent_kafka import Producer

    from tierflow.pipeline.kafka.topics import ensure_topics

    # examples/ is not an installed package: load the script the way a user runs it.
    spec = importlib.util.spec_from_file_location("marketing_consumer", ROOT / "examples" / "marketing_consumer.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)  # dataclasses look their module up
    spec.loader.exec_module(example)

    w = World(redis_url, config_with())
    w.ingest([w.purchase("u1", T0, 3000.0), w.purchase("u2", T0 - 100 * DAY_MS, 10.0)], T0)
    w.tiers.tick(T0)  # the first snapshot: u1 is now high on R and M
    records = w.tiers.outbox.pending(["u1"])["u1"]
    segments = [(r.new, r.reason) for r in records if r.dimension == "segment"]
    assert segments == [("general_win_back", "event"), ("important_develop", "means_shift")]
    ensure_topics(settings)
    producer = Producer(settings.kafka.confluent())
    # Published, then published again after a crash before the acknowledgement.
    for record in records + records[:3]:
        producer.produce(settings.topics.tier_changes, key=record.user_id, value=msgspec.json.encode(record))
    producer.produce(settings.topics.tier_changes, key="u1", value=b'{"not": "a change"}')
    assert producer.flush(30) == 0
    w.tiers.outbox.ack({"u1": records[-1].seq})

    lines: list[str] = []
    stats = example.run(settings, group_id=settings.group_id, from_beginning=True, idle_timeout_s=10,
                max_messages=len(records) + 4, out=lines.append)
    assert (stats.received, stats.duplicates, stats.invalid) == (len(records) + 4, 3, 1)
    assert len(stats.actions) == len(records)
    assert any(example.SEGMENT_ACTIONS["important_develop"] in line for line in stats.actions)


def test_a_clock_far_behind_a_users_history_evaluates_as_of_their_newest_event(world: World) -> None:
    late = T0 + 500 * DAY_MS  # the state keeps 400 days behind its newest event
    world.apply([world.purchase("u1", T0), world.purchase("u1", late)])
    result = world.tiers.evaluate_users(["u1"], T0 - DAY_MS, "event")
    assert result.evaluations["u1"].as_of_ms == late
    assert result.evaluations["u1"].scores.r == 5


def test_a_snapshot_taken_between_an_evaluation_and_its_flush_does_not_leave_a_stale_segment(world: World) -> None:
    # M scores: a at 5, c and d at 1: the first snapshot's M mean is 7/3.
    for user, yuan in (("a", 2000.0), ("c", 10.0), ("d", 10.0)):
        world.ingest([world.purchase(user, T0, yuan)], T0)
    assert world.tiers.tick(T0).shift.population.mean("m") == pytest.approx(7 / 3)  # type: ignore[union-attr]
    later = T0 + 1000
    for user in ("e", "f"):  # two more big spenders: the next snapshot's mean is 3.4, so M=3 turns low
        world.ingest([world.purchase(user, later, 2000.0)], later)
    when = T0 + world.config.tiering.population.snapshot_interval_ms
    flush = world.tiers._flush
    swept: list[str] = []

    def timer_first(deltas: list[Delta]) -> None:
        # The timer's snapshot and sweep land after b was evaluated (M=3, high against 7/3) and
        # committed, and before b's new score reaches the M=3 set the sweep walks.
        world.tiers._flush = flush  # type: ignore[method-assign]
        shift = world.tiers.tick(when)
        assert shift.shift is not None and 3 in shift.shift.flips["m"]
        swept.extend(shift.swept.evaluations)
        flush(deltas)

    world.tiers._flush = timer_first  # type: ignore[method-assign]
    world.ingest([world.purchase("b", when, 500.0)], when)
    assert "b" not in swept  # the sweep missed b
    current = world.tiers.preview("b", when)
    assert current is not None and current.high is not None and not current.high.m
    # b's stored segment is the one the current snapshot gives, changed as a means shift.
    assert world.client.hget(TierKeys.of("b").tier, "v:segment") == current.segment
    last = [r for r in world.records("b") if r.dimension == "segment"][-1]
    assert (last.new, last.reason) == (current.segment, "means_shift")
    assert_population_consistent(world)
