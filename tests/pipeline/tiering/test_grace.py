"""Downgrade grace and will_downgrade notices: the pure rule, and against a real Redis the
records of a known history on an event-time clock, equal to an independent recomputation
from the same history published without grace, replays included."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pipeline.tiering.test_store import T0, World, config_with
from tierflow.pipeline.config.domain import Config, load_config
from tierflow.pipeline.ingest.validate import parse_ts
from tierflow.pipeline.rewards.rules import match_tier_change
from tierflow.pipeline.state.summary import DAY_MS, iso
from tierflow.pipeline.tiering.config import DowngradeConfig, TieringConfig
from tierflow.pipeline.tiering.evaluate import Evaluation
from tierflow.pipeline.tiering.grace import Hold, apply_grace, decode_holds, encode_holds, is_downgrade
from tierflow.pipeline.tiering.lifecycle import Lifecycle
from tierflow.pipeline.tiering.membership import Membership
from tierflow.schemas.tier_changes import ChangeScores, TierChange

BASE = load_config().tiering


def tiering(membership: int = 0, segment: int = 0, notice: int = 0) -> TieringConfig:
    return msgspec.structs.replace(BASE, downgrade=DowngradeConfig(membership, segment, notice))


def member(tier: str, as_of_ms: int, boundary: int | None = None) -> Evaluation:
    return Evaluation(
        user_id="u", as_of_ms=as_of_ms, raw=None, scores=None, high=None, segment=None,
        lifecycle=Lifecycle("first_purchase", 0), membership=Membership(tier, 10, 888.0, None, False), aipl=None,
        tags=[f"membership:{tier}"], next_boundary_ms=boundary,
    )


def test_downgrades_are_by_rank() -> None:
    assert is_downgrade("membership", "88VIP", "super", BASE) and is_downgrade("membership", "super", "ordinary", BASE)
    assert not is_downgrade("membership", "ordinary", "88VIP", BASE)
    assert is_downgrade("segment", "important_value", "general_value", BASE)
    assert not is_downgrade("segment", "general_win_back", "general_retain", BASE)
    assert not is_downgrade("segment", "important_value", None, BASE)  # no segment any more: not held
    assert not is_downgrade("membership", "gold", "ordinary", BASE)  # a tier the config no longer has


def test_a_downgrade_is_held_noticed_once_and_released_after_its_grace() -> None:
    config = tiering(membership=10, notice=3)
    start = T0
    first = apply_grace(member("ordinary", start, start + 50 * DAY_MS), {"v:membership": "super"}, start, config)
    assert first.evaluation.membership.tier == "super" and "membership:super" in first.evaluation.tags
    assert first.notices == [] and first.holds == {"membership": Hold(start)}
    assert first.evaluation.next_boundary_ms == start + 7 * DAY_MS  # the notice comes first
    stored = {"v:membership": "super", "holds": encode_holds(first.holds)}

    at_notice = apply_grace(member("ordinary", start + 7 * DAY_MS), stored, start + 7 * DAY_MS, config)
    [notice] = at_notice.notices
    assert (notice.held, notice.to, notice.at_ms, notice.downgrade_ms) == (
        "super", "ordinary", start + 7 * DAY_MS, start + 10 * DAY_MS)
    assert at_notice.evaluation.next_boundary_ms == start + 10 * DAY_MS
    stored["holds"] = encode_holds(at_notice.holds)
    again = apply_grace(member("ordinary", start + 8 * DAY_MS), stored, start + 8 * DAY_MS, config)
    assert again.notices == [] and again.evaluation.membership.tier == "super"  # once

    released = apply_grace(member("ordinary", start + 10 * DAY_MS), stored, start + 10 * DAY_MS, config)
    assert released.evaluation.membership.tier == "ordinary" and released.holds == {}
    assert released.released == {"membership": start}

    recovered = apply_grace(member("super", start + 9 * DAY_MS), stored, start + 9 * DAY_MS, config)
    assert recovered.evaluation.membership.tier == "super" and recovered.holds == {}  # cancelled


def test_no_grace_changes_nothing_and_a_short_grace_notices_at_once() -> None:
    e = member("ordinary", T0, T0 + DAY_MS)
    assert apply_grace(e, {"v:membership": "super"}, T0, tiering()).evaluation == e
    short = apply_grace(e, {"v:membership": "super"}, T0, tiering(membership=2, notice=5))
    assert [n.at_ms for n in short.notices] == [T0] and short.holds == {"membership": Hold(T0, True)}
    assert decode_holds(encode_holds(short.holds)) == short.holds


def commit_like_the_store(changes: list[tuple[int, str]], config: TieringConfig, end_ms: int) -> list[Published]:
    """The records apply_grace leads to when membership takes these values at these instants and
    the timer fires at every boundary it asks for (event-time clock)."""
    stored: dict[str, str] = {}
    out: list[Published] = []
    current = ""

    def evaluate(at_ms: int, reason: str) -> int | None:
        g = apply_grace(member(current, at_ms), stored, at_ms, config)
        out.extend(Published("membership", n.held, n.held, "will_downgrade", n.at_ms) for n in g.notices)
        new = g.evaluation.membership.tier
        if new != stored.get("v:membership"):
            out.append(Published("membership", stored.get("v:membership"), new, reason, at_ms))
            stored["v:membership"] = new
        stored["holds"] = encode_holds(g.holds)
        return g.evaluation.next_boundary_ms

    boundary: int | None = None
    for at_ms, value in [*changes, (end_ms, "")]:
        while boundary is not None and boundary < at_ms:
            boundary = evaluate(boundary, "time_decay")
        if not value:
            break
        current = value
        boundary = evaluate(at_ms, "event")
    return out


timelines = st.lists(st.tuples(st.integers(0, 60), st.sampled_from(["ordinary", "super", "88VIP"])),
                     min_size=1, max_size=12, unique_by=lambda c: c[0])


@settings(max_examples=300, deadline=None)
@given(timelines, st.integers(1, 12), st.integers(0, 12))
def test_the_pure_rule_equals_the_independent_model(timeline: list[tuple[int, str]], grace: int,
                                                    notice: int) -> None:
    # Day k at k ms past midnight: no hold ends or notice falls on another change's instant.
    changes = [(day * DAY_MS + day, value) for day, value in sorted(timeline)]
    end = 100 * DAY_MS
    config = tiering(membership=grace, notice=notice)
    raw: list[Published] = []
    shown: str | None = None
    for at_ms, value in changes:
        if value != shown:
            raw.append(Published("membership", shown, value, "event", at_ms))
            shown = value
    rules = DowngradeConfig(membership_grace_days=grace, notice_days=notice)
    full = msgspec.structs.replace(load_config(), tiering=config)
    assert commit_like_the_store(changes, config, end) == recompute(raw, rules, full, end)


# --- against a real Redis: the same history with and without grace ------------------------------

GRACE = DowngradeConfig(membership_grace_days=10, segment_grace_days=6, notice_days=3)
DAYS = 70


@dataclass(frozen=True)
class Published:
    dimension: str
    old: str | None
    new: str | None
    reason: str
    at_ms: int


def rank(dimension: str, value: str | None, config: Config) -> int | None:
    """Written apart from the store's ranking: segments as listed in docs/domain.md, best first."""
    segments = ["important_value", "important_develop", "important_retain", "important_win_back",
                "general_value", "general_develop", "general_retain", "general_win_back"]
    if dimension == "segment":
        return -segments.index(value) if value in segments else None
    tiers = [t.name for t in config.tiering.membership.tiers] + [config.tiering.membership.paid.name]
    return tiers.index(value) if value in tiers else None


def recompute(raw: list[Published], rules: DowngradeConfig, config: Config, end_ms: int) -> list[Published]:
    """The records with grace, from the values published without it (an independent model)."""
    graces = {"segment": rules.segment_grace_days, "membership": rules.membership_grace_days}
    return [p for dim, grace in graces.items()
            for p in recompute_dimension([c for c in raw if c.dimension == dim], dim, grace, rules.notice_days,
                                         config, end_ms)]


def recompute_dimension(raw: list[Published], dimension: str, grace: int, notice_days: int, config: Config,
                        end_ms: int) -> list[Published]:
    out: list[Published] = []
    shown: str | None = None
    actual: str | None = None
    hold: list[int | bool] | None = None  # [since, noticed]

    def run_hold(until_ms: int) -> None:
        """What the held downgrade does up to until_ms: its notice, its release."""
        nonlocal hold, shown
        if hold is None:
            return
        since, noticed = int(hold[0]), bool(hold[1])
        due = since + grace * DAY_MS
        notice_at = max(since, due - notice_days * DAY_MS)
        if notice_days and not noticed and notice_at <= until_ms and notice_at < due:
            out.append(Published(dimension, shown, shown, "will_downgrade", notice_at))
            hold[1] = True
        if due <= until_ms:
            out.append(Published(dimension, shown, actual, "time_decay", due))
            shown, hold = actual, None

    for change in raw:
        run_hold(change.at_ms - 1)
        actual = change.new
        before, after = rank(dimension, shown, config), rank(dimension, actual, config)
        if before is not None and after is not None and after < before:
            if hold is None:
                hold = [change.at_ms, False]
            run_hold(change.at_ms)
        else:
            hold = None
            if actual != shown:
                out.append(Published(dimension, shown, actual, change.reason, change.at_ms))
                shown = actual
    run_hold(end_ms)
    return out


def history(w: World) -> list[list]:
    """Per day, the batch of events (a paid member who lapses; customers who buy now and then)."""
    days: list[list] = [[] for _ in range(DAYS)]
    days[0] = [w.purchase("vip", T0, 88.0, sku="MEMBERSHIP-88VIP"), w.purchase("vip", T0 + 1, 1500.0),
               w.purchase("old", T0 - 40 * DAY_MS, 50.0), w.purchase("steady", T0 + 2, 300.0)]
    for day in (9, 21, 33, 45):
        days[day] = [w.purchase("steady", T0 + day * DAY_MS + 3, 300.0)]
    days[26] = [w.purchase("vip", T0 + 26 * DAY_MS + 4, 120.0)]  # the vip comes back during a segment hold
    days[40] = [w.browse("vip", T0 + 40 * DAY_MS + 5)]
    return days


def graced_config(rules: DowngradeConfig) -> Config:
    """The default config with these grace rules and a 15-day paid membership (the vip lapses on day 15)."""
    base = config_with()
    paid = msgspec.structs.replace(base.tiering.membership.paid, term_days=15)
    membership = msgspec.structs.replace(base.tiering.membership, paid=paid)
    return msgspec.structs.replace(base, tiering=msgspec.structs.replace(
        base.tiering, downgrade=rules, membership=membership))


def play(url: str, rules: DowngradeConfig, replay: bool, days: int = DAYS) -> World:
    """The history's first `days` days through a fresh Redis db; the caller closes the world's client."""
    redis.Redis.from_url(url).flushdb()
    w = World(url, graced_config(rules))
    for day, batch in enumerate(history(w)[:days]):
        noon = T0 + day * DAY_MS
        if batch:
            w.ingest(batch, max(noon, max(e.ts_ms for e in batch)))
            if replay:
                w.tiers.on_batch(batch, noon)  # a replayed batch: nothing twice
        for _ in range(3):  # ticks through the day: decay, snapshot, sweep
            w.tiers.tick(noon)
        if replay and day % 7 == 3:
            w.tiers.evaluate_users(["vip", "steady", "old"], noon, "time_decay")  # a re-sent schedule entry
    return w


def run(url: str, rules: DowngradeConfig, replay: bool) -> list[TierChange]:
    w = play(url, rules, replay)
    records = [r for user in ("vip", "steady", "old") for r in w.records(user)]
    w.client.close()
    return records


def published(records: list[TierChange]) -> list[Published]:
    return [Published(r.dimension, r.old, r.new, r.reason, parse_ts(r.event_time))
            for r in records if r.dimension in ("segment", "membership")]


@pytest.mark.parametrize("replay", [False, True])
def test_held_downgrades_and_notices_equal_an_independent_recomputation(redis_url: str, replay: bool) -> None:
    raw = run(redis_url, DowngradeConfig(), replay=False)
    graced = run(redis_url, GRACE, replay)
    config = load_config()
    by_user: dict[str, list[TierChange]] = {}
    for r in raw:
        by_user.setdefault(r.user_id, []).append(r)
    for user, records in by_user.items():
        mine = [r for r in graced if r.user_id == user]
        expected = recompute(published(records), GRACE, config, T0 + DAYS * DAY_MS)
        assert sorted(published(mine), key=lambda p: (p.dimension, p.at_ms)) == \
            sorted(expected, key=lambda p: (p.dimension, p.at_ms)), user
        # Versions and seqs still run without gaps; a notice keeps its dimension's version.
        assert [r.seq for r in mine] == list(range(1, len(mine) + 1))
        for dim in ("segment", "membership"):
            changes = [r.version for r in mine if r.dimension == dim and r.reason != "will_downgrade"]
            assert changes == list(range(1, len(changes) + 1))
    notices = [r for r in graced if r.reason == "will_downgrade"]
    assert any(n.dimension == "membership" for n in notices)  # the lapsed paid membership
    vip = next(n for n in notices if n.user_id == "vip" and n.dimension == "membership")
    assert vip.why is not None and (vip.old, vip.new, vip.why.downgrade_to) == ("88VIP", "88VIP", "super")
    lapse = T0 + 15 * DAY_MS
    assert (vip.why.held_since, vip.why.downgrade_at) == (iso(lapse), iso(lapse + 10 * DAY_MS))
    assert vip.event_time == iso(lapse + 7 * DAY_MS)


def test_a_notice_fires_no_reward_rule() -> None:
    rewards = load_config().rewards
    entered = TierChange(user_id="u", dimension="membership", old="ordinary", new="super", version=2, seq=5,
                         reason="event", scores=ChangeScores(None, None, None), points=1200, repurchases=0,
                         event_time="2026-10-01T00:00:00Z")
    assert match_tier_change(rewards, entered)  # "entered super" is a default rule
    notice = msgspec.structs.replace(entered, old="super", reason="will_downgrade")
    assert match_tier_change(rewards, notice) == []
