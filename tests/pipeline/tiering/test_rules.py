"""Pure tiering core: RFM scores, high/low, the eight segments, lifecycle,
membership (88/888), tags, AIPL and next boundary. No services needed."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tierflow.pipeline.config.domain import ConfigError, load_config
from tierflow.pipeline.state.summary import DAY_MS, Summary
from tierflow.pipeline.tiering.config import check_against
from tierflow.pipeline.tiering.evaluate import Evaluation, evaluate
from tierflow.pipeline.tiering.membership import PaidPurchase, paid_until
from tierflow.pipeline.tiering.rfm import (
    Population,
    RawRfm,
    quantile_cuts,
    score,
    score_at_least,
    score_at_most,
)

CONFIG = load_config()
TIERING = CONFIG.tiering
NOW = 1_790_000_000_000  # 2026-09-21T...Z
TODAY = NOW // DAY_MS
YUAN = 100

# docs/domain.md, "The eight RFM segments", transcribed: (R high, F high, M high) -> segment.
SEGMENT_TABLE = [
    ("H", "H", "H", "important_value"),
    ("H", "L", "H", "important_develop"),
    ("L", "H", "H", "important_retain"),
    ("L", "L", "H", "important_win_back"),
    ("H", "H", "L", "general_value"),
    ("H", "L", "L", "general_develop"),
    ("L", "H", "L", "general_retain"),
    ("L", "L", "L", "general_win_back"),
]


def tiering_with(**sections: dict) -> object:
    """The default tiering config with some sections overridden (validated like a user file)."""
    data = msgspec.to_builtins(TIERING)
    for name, value in sections.items():
        data[name] = {**data[name], **value} if isinstance(data[name], dict) else value
    return msgspec.convert(data, type(TIERING))


def summary(
    *,
    recency: int | None = None,
    freq: int = 0,
    spend_cents: int = 0,
    lifetime: int | None = None,
    lifetime_cents: int | None = None,
    counts: dict[str, int] | None = None,
    skus: dict[str, dict[str, int]] | None = None,
    categories: dict[str, dict[str, float]] | None = None,
    channels: dict[str, int] | None = None,
    purchase_channels: dict[str, int] | None = None,
    as_of: int = NOW,
) -> Summary:
    purchases = lifetime if lifetime is not None else freq if recency is not None else 0
    last = (as_of // DAY_MS - recency) * DAY_MS if recency is not None else None
    return Summary(
        user_id="u1",
        as_of_ms=as_of,
        recency_days=recency,
        frequency={"30d": freq, "90d": freq, "lifetime": purchases},
        monetary_cents={
            "30d": spend_cents,
            "90d": spend_cents,
            "lifetime": lifetime_cents if lifetime_cents is not None else spend_cents,
        },
        first_purchase_ms=last,
        last_purchase_ms=last,
        categories=categories or {},
        skus=skus or {},
        channels=channels or {},
        purchase_channels=purchase_channels or {},
        counts=counts or {},
    )


def population(r: list[int], f: list[int], m: list[int]) -> Population:
    return Population(counts={"r": r, "f": f, "m": m})


# Every dimension's mean is 3: score 4 is high, 2 is low.
MEAN_3 = population([0, 0, 1, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0])


# --- the domain brief's examples -------------------------------------------------------------


def test_m_score_4_against_mean_3_5_is_high() -> None:
    pop = population([1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 1, 1, 0])
    assert pop.mean("m") == 3.5
    assert pop.high("m", 4) is True
    assert pop.high("m", 3) is False


def test_f_score_3_against_mean_4_1_is_low() -> None:
    pop = population([1, 0, 0, 0, 0], [0, 0, 1, 7, 2], [1, 0, 0, 0, 0])
    assert pop.mean("f") == pytest.approx(4.1)
    assert pop.high("f", 3) is False
    assert pop.high("f", 4) is False
    assert pop.high("f", 5) is True


def test_score_equal_to_the_mean_is_low_and_an_empty_population_has_no_high() -> None:
    assert MEAN_3.high("r", 3) is False
    assert Population().high("r", 5) is False
    assert Population().mean("r") is None


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        (0, 5),
        (4, 5),
        (5, 5),
        (6, 4),
        (10, 4),
        (11, 3),
        (20, 3),
        (21, 2),
        (30, 2),
        (31, 1),
        (400, 1),
    ],
)
def test_recency_thresholds(days: int, expected: int) -> None:
    s = evaluate(summary(recency=days, freq=1, spend_cents=100), MEAN_3, TIERING, NOW)
    assert s.scores is not None and s.scores.r == expected


@pytest.mark.parametrize(
    ("purchases", "expected"),
    [(0, 1), (1, 1), (2, 2), (4, 2), (5, 3), (9, 3), (10, 4), (14, 4), (15, 5), (100, 5)],
)
def test_frequency_thresholds(purchases: int, expected: int) -> None:
    s = evaluate(
        summary(recency=1, freq=purchases, lifetime=max(purchases, 1)), MEAN_3, TIERING, NOW
    )
    assert s.scores is not None and s.scores.f == expected


@pytest.mark.parametrize(
    ("cents", "expected"),
    [
        (0, 1),
        (19_999, 1),
        (20_000, 2),
        (49_999, 2),
        (50_000, 3),
        (100_000, 4),
        (199_999, 4),
        (200_000, 5),
    ],
)
def test_monetary_thresholds_in_yuan(cents: int, expected: int) -> None:
    s = evaluate(summary(recency=1, freq=1, spend_cents=cents), MEAN_3, TIERING, NOW)
    assert s.scores is not None and s.scores.m == expected


@pytest.mark.parametrize(
    ("lifetime_yuan", "tier", "price"), [(999, "ordinary", 888), (1000, "super", 88)]
)
def test_88_888_offer(lifetime_yuan: int, tier: str, price: float) -> None:
    s = evaluate(
        summary(recency=40, freq=0, lifetime=1, lifetime_cents=lifetime_yuan * YUAN),
        MEAN_3,
        TIERING,
        NOW,
    )
    assert s.membership.points == lifetime_yuan
    assert s.membership.tier == tier
    assert s.membership.offer_price == price


def test_activity_points_count_towards_the_offer() -> None:
    # 990 yuan + 2 reviews (10 each) = 1010 points: super member, 88 offer.
    s = evaluate(
        summary(recency=1, freq=1, spend_cents=99_000, counts={"interaction:review": 2}),
        MEAN_3,
        TIERING,
        NOW,
    )
    assert (s.membership.points, s.membership.tier, s.membership.offer_price) == (1010, "super", 88)


# --- segments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("r", "f", "m", "segment"), SEGMENT_TABLE)
def test_every_segment_is_reachable_with_its_mapping(r: str, f: str, m: str, segment: str) -> None:
    # Against means of 3: R 5 (1 day) vs R 1 (60 days), F 4 (12 purchases) vs F 1, M 5 vs M 1.
    s = summary(
        recency=1 if r == "H" else 60,
        freq=12 if f == "H" else 1,
        lifetime=12 if f == "H" else 1,
        spend_cents=300_000 if m == "H" else 1_000,
    )
    e = evaluate(s, MEAN_3, TIERING, NOW)
    assert e.high is not None and (e.high.r, e.high.f, e.high.m) == (r == "H", f == "H", m == "H")
    assert e.segment == segment
    assert f"segment:{segment}" in e.tags


def test_no_purchase_means_no_scores_and_no_segment() -> None:
    e = evaluate(summary(counts={"browse": 3}), MEAN_3, TIERING, NOW)
    assert (e.raw, e.scores, e.high, e.segment) == (None, None, None, None)
    assert e.lifecycle.stage == "new"
    assert e.to_json()["scores"] == {"r": None, "f": None, "m": None}


def test_a_lapsed_buyer_with_no_purchase_in_the_window_is_still_scored() -> None:
    e = evaluate(
        summary(recency=200, freq=0, spend_cents=0, lifetime=3, lifetime_cents=9_000),
        MEAN_3,
        TIERING,
        NOW,
    )
    assert e.scores is not None and (e.scores.r, e.scores.f, e.scores.m) == (1, 1, 1)
    assert e.segment == "general_win_back"


user_states = st.tuples(
    st.integers(0, 400),  # recency days
    st.integers(0, 40),  # purchases in the window
    st.integers(0, 500_000),  # cents in the window
)


@settings(max_examples=200, deadline=None)
@given(st.lists(user_states, min_size=1, max_size=60))
def test_every_scored_user_is_in_exactly_one_segment(users: list[tuple[int, int, int]]) -> None:
    # Score everyone, take the population means from those scores, then segment.
    empty = Population()
    scored = [
        evaluate(summary(recency=d, freq=f, spend_cents=c, lifetime=max(f, 1)), empty, TIERING, NOW)
        for d, f, c in users
    ]
    counts = {dim: [0] * 5 for dim in "rfm"}
    for e in scored:
        assert e.scores is not None
        for dim in "rfm":
            counts[dim][e.scores.of(dim) - 1] += 1
    pop = Population(counts=counts)
    means = {dim: pop.mean(dim) for dim in "rfm"}
    segments: Counter[str] = Counter()
    for (d, f, c), before in zip(users, scored, strict=True):
        e = evaluate(
            summary(recency=d, freq=f, spend_cents=c, lifetime=max(f, 1)), pop, TIERING, NOW
        )
        assert e.scores == before.scores
        bits = ["H" if e.scores.of(dim) > means[dim] else "L" for dim in "rfm"]
        matching = [seg for r, f_, m, seg in SEGMENT_TABLE if [r, f_, m] == bits]
        assert matching == [e.segment]
        segments[e.segment] += 1
    assert sum(segments.values()) == len(users)


ascending4 = st.lists(st.integers(1, 10_000), min_size=4, max_size=4, unique=True).map(sorted)


@settings(max_examples=200, deadline=None)
@given(ascending4, st.integers(0, 20_000), st.integers(0, 20_000))
def test_scores_are_monotone(bounds: list[int], a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert score_at_least(lo, bounds) <= score_at_least(hi, bounds)  # F, M: more is better
    assert score_at_most(lo, bounds) >= score_at_most(hi, bounds)  # R: more days is worse
    for s in (score_at_least(lo, bounds), score_at_most(lo, bounds)):
        assert 1 <= s <= 5


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 400),
    st.integers(0, 400),
    st.integers(0, 40),
    st.integers(0, 40),
    st.integers(0, 500_000),
    st.integers(0, 500_000),
)
def test_evaluated_scores_are_monotone_in_recency_frequency_and_amount(
    d1: int, d2: int, f1: int, f2: int, c1: int, c2: int
) -> None:
    def scores(d: int, f: int, c: int):
        e = evaluate(
            summary(recency=d, freq=f, spend_cents=c, lifetime=max(f, 1)), MEAN_3, TIERING, NOW
        )
        assert e.scores is not None
        return e.scores

    base = scores(d1, f1, c1)
    assert (scores(max(d1, d2), f1, c1).r <= base.r) and (scores(min(d1, d2), f1, c1).r >= base.r)
    assert (scores(d1, max(f1, f2), c1).f >= base.f) and (scores(d1, min(f1, f2), c1).f <= base.f)
    assert (scores(d1, f1, max(c1, c2)).m >= base.m) and (scores(d1, f1, min(c1, c2)).m <= base.m)


# --- quantile mode ----------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 1_000_000), min_size=5, max_size=200, unique=True))
def test_quantile_cuts_put_distinct_values_in_their_quintiles(values: list[int]) -> None:
    cuts = quantile_cuts(values)
    assert cuts is not None
    n = len(values)
    for rank, v in enumerate(sorted(values)):
        # The value at 0-based rank i is in quintile floor(5i/n) + 1.
        assert score_at_least(v, cuts) == 5 * rank // n + 1
    if n % 5 == 0:
        assert Counter(score_at_least(v, cuts) for v in values) == dict.fromkeys(
            range(1, 6), n // 5
        )


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=200))
def test_quantile_scores_with_ties_give_equal_values_equal_scores_and_beat_the_right_share(
    values: list[int],
) -> None:
    cuts = quantile_cuts(values)
    assert cuts is not None
    n = len(values)
    for v in set(values):
        s = score_at_least(v, cuts)
        below = sum(1 for w in values if w < v)
        # Score s means the value beats at least (s-1) fifths of the population, but not s fifths.
        assert below >= math.ceil((s - 1) * n / 5)
        assert s == 5 or below < math.ceil(s * n / 5)


def test_quantile_mode_scores_each_dimension_by_population_quintile() -> None:
    quantiles = {"mode": "quantiles"}
    config = tiering_with(recency=quantiles, frequency=quantiles, monetary=quantiles)
    days = list(range(10))  # last purchase days TODAY-0 .. TODAY-9
    raws = [RawRfm(TODAY - d, 10 - d, (10 - d) * 1000) for d in days]
    pop = Population(
        cuts={
            "r": quantile_cuts([r.last_purchase_day for r in raws]) or [],
            "f": quantile_cuts([r.frequency for r in raws]) or [],
            "m": quantile_cuts([r.monetary_cents for r in raws]) or [],
        }
    )
    got = [score(r, TODAY, pop, config) for r in raws]
    # Ten users: the two most recent / most frequent / biggest spenders score 5, the last two 1.
    expected = [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert [s.r for s in got] == expected
    assert [s.f for s in got] == expected
    assert [s.m for s in got] == expected
    # Without cut points yet a quantile dimension falls back to its threshold table.
    fallback = score(RawRfm(TODAY - 3, 15, 200_000), TODAY, Population(), config)
    assert (fallback.r, fallback.f, fallback.m) == (5, 5, 5)


def test_quantile_recency_does_not_decay_with_time_alone() -> None:
    config = tiering_with(recency={"mode": "quantiles"})
    pop = Population(counts=MEAN_3.counts, cuts={"r": [TODAY - 8, TODAY - 6, TODAY - 4, TODAY - 2]})
    e = evaluate(summary(recency=2, freq=1, spend_cents=100), pop, config, NOW)
    assert e.scores is not None and e.scores.r == 5
    later = NOW + 100 * DAY_MS
    e2 = evaluate(summary(recency=102, freq=0, lifetime=1, as_of=later), pop, config, later)
    assert e2.scores is not None and e2.scores.r == 5
    # Only the F/M window still moves with time: its purchase leaves 30 days after its day.
    assert e.next_boundary_ms is None
    with_days = evaluate(
        e_summary := summary(recency=2, freq=1, spend_cents=100),
        pop,
        config,
        NOW,
        purchase_days=[TODAY - 2],
    )
    assert e_summary.recency_days == 2
    assert with_days.next_boundary_ms == (TODAY - 2 + 30) * DAY_MS


# --- lifecycle, AIPL, tags ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("purchases", "lifetime_yuan", "stage", "repurchases"),
    [
        (0, 0, "new", 0),
        (1, 50, "first_purchase", 0),
        (2, 80, "repeat", 1),
        (4, 300, "repeat", 3),
        (3, 5000, "vip", 2),
        (2, 9000, "repeat", 1),
    ],
)
def test_lifecycle(purchases: int, lifetime_yuan: int, stage: str, repurchases: int) -> None:
    s = summary(
        recency=3 if purchases else None,
        freq=purchases,
        lifetime=purchases,
        lifetime_cents=lifetime_yuan * YUAN,
        spend_cents=lifetime_yuan * YUAN,
    )
    e = evaluate(s, MEAN_3, TIERING, NOW)
    assert (e.lifecycle.stage, e.lifecycle.repurchases) == (stage, repurchases)
    assert ("F" + str(repurchases) in e.tags) == (repurchases > 0)


def test_a_paid_member_who_bought_is_vip() -> None:
    bought = PaidPurchase(NOW - DAY_MS, 1)
    e = evaluate(
        summary(recency=1, freq=1, spend_cents=8_800), MEAN_3, TIERING, NOW, paid_purchases=[bought]
    )
    assert e.membership.tier == "88VIP"
    assert e.lifecycle.stage == "vip"


@pytest.mark.parametrize(
    ("counts", "purchases", "stage"),
    [
        ({}, 0, None),
        ({"browse": 2}, 0, "aware"),
        ({"cart": 1, "cart:remove": 1}, 0, "aware"),
        ({"browse": 2, "cart": 1, "cart:add": 1}, 0, "interest"),
        ({"interaction": 1, "interaction:favorite": 1}, 0, "interest"),
        ({"browse": 1}, 1, "purchase"),
        ({"interaction": 1, "interaction:share": 1}, 1, "loyalty"),
        ({}, 2, "loyalty"),
    ],
)
def test_aipl_stage(counts: dict[str, int], purchases: int, stage: str | None) -> None:
    s = summary(recency=2 if purchases else None, freq=purchases, lifetime=purchases, counts=counts)
    assert evaluate(s, MEAN_3, TIERING, NOW).aipl == stage


def test_tags_follow_the_naming_convention() -> None:
    s = summary(
        recency=2,
        freq=4,
        lifetime=4,
        spend_cents=40_000,
        skus={
            "TP": {"orders": 2, "qty": 5},
            "AB": {"orders": 3, "qty": 3},
            "ZZ": {"orders": 0, "qty": 0},
        },
        categories={
            "dried_fruit": {"orders": 3, "qty": 6, "amount": 240.0},
            "tea": {"orders": 1, "qty": 1, "amount": 160.0},
        },
        channels={"app": 9, "chat": 2},
        purchase_channels={"chat": 3, "app": 1},
        counts={
            "purchase_weekend": 3,
            "purchase_weekday": 1,
            "interaction:coupon_claim": 4,
            "interaction:campaign_join": 1,
        },
    )
    tags = evaluate(s, MEAN_3, TIERING, NOW).tags
    assert tags[:7] == [
        "F3",
        "AB3",
        "TP2",
        "fav_category:dried_fruit",
        "channel:chat",
        "weekend_buyer",
        "prefers_coupons",
    ]
    assert {"lifecycle:repeat", "membership:ordinary", "aipl:loyalty"} <= set(tags)


def test_need_tags_stay_silent_without_a_clear_preference() -> None:
    config = tiering_with(tags={"favourite_category_min_share": 0.7, "max_sku_tags": 1})
    s = summary(
        recency=2,
        freq=2,
        lifetime=2,
        skus={"A": {"orders": 1, "qty": 1}, "B": {"orders": 1, "qty": 1}},
        categories={
            "x": {"orders": 1, "qty": 1, "amount": 60.0},
            "y": {"orders": 1, "qty": 1, "amount": 40.0},
        },
        counts={
            "purchase_weekend": 1,
            "purchase_weekday": 3,
            "interaction:coupon_claim": 1,
            "interaction:referral_accept": 1,
        },
    )
    tags = evaluate(s, MEAN_3, config, NOW).tags
    assert "A1" in tags and "B1" not in tags
    assert not [t for t in tags if t.startswith(("fav_category:", "prefers_"))]
    assert "weekday_buyer" in tags


# --- membership term and time ------------------------------------------------------------------


def test_paid_terms_stack_back_to_back_in_any_arrival_order() -> None:
    term = 365 * DAY_MS
    a, b, c = PaidPurchase(0, 1), PaidPurchase(100 * DAY_MS, 1), PaidPurchase(1000 * DAY_MS, 2)
    assert paid_until([a], 365) == term
    assert paid_until([b, a], 365) == paid_until([a, b], 365) == 2 * term
    assert paid_until([c, b, a], 365) == 1000 * DAY_MS + 2 * term


def test_the_paid_tier_expires_on_time_and_the_boundary_says_when() -> None:
    bought = PaidPurchase(NOW, 1)
    until = NOW + 365 * DAY_MS
    s = summary(recency=0, freq=1, spend_cents=88_800)
    e = evaluate(s, MEAN_3, TIERING, NOW, paid_purchases=[bought])
    assert (e.membership.tier, e.membership.paid_until_ms) == ("88VIP", until)

    def at(instant: int) -> Evaluation:
        """The same customer, with nothing bought since, as of a later instant."""
        later = summary(recency=instant // DAY_MS - NOW // DAY_MS, freq=0, lifetime=1,
                        lifetime_cents=88_800, as_of=instant)
        return evaluate(later, MEAN_3, TIERING, instant, paid_purchases=[bought])

    e_before = at(until - 1)
    assert e_before.membership.tier == "88VIP"
    assert e_before.next_boundary_ms == until

    e_after = at(until)
    assert e_after.membership.tier == "ordinary"
    assert e_after.membership.paid_active is False


def test_a_future_dated_membership_purchase_is_a_boundary_not_yet_a_tier() -> None:
    later = NOW + 3_600_000
    e = evaluate(
        summary(recency=1, freq=1, spend_cents=100),
        MEAN_3,
        TIERING,
        NOW,
        paid_purchases=[PaidPurchase(later, 1)],
    )
    assert e.membership.tier == "ordinary"
    assert e.next_boundary_ms == later


def test_recency_boundary_is_the_first_day_past_the_threshold() -> None:
    # Bought 3 days ago: R=5 until day 5 inclusive, R=4 from the start of day 6.
    e = evaluate(summary(recency=3, freq=1, spend_cents=100), MEAN_3, TIERING, NOW)
    assert e.next_boundary_ms == (TODAY - 3 + 6) * DAY_MS
    # Past the last threshold: R is already 1, only the window can move.
    assert (
        evaluate(summary(recency=31, freq=0, lifetime=1), MEAN_3, TIERING, NOW).next_boundary_ms
        is None
    )


# A user's purchases as (day offset from TODAY, cents); the summary at any instant is
# recomputed here independently of the state store.
purchase_lists = st.lists(
    st.tuples(st.integers(-120, 0), st.integers(1, 300_000)), min_size=1, max_size=12
)


def summary_at(purchases: list[tuple[int, int]], as_of: int) -> Summary:
    day = as_of // DAY_MS
    past = [(TODAY + off, c) for off, c in purchases if TODAY + off <= day]
    window = [(d, c) for d, c in past if d > day - 30]
    return summary(
        recency=day - max(d for d, _ in past) if past else None,
        freq=len(window),
        spend_cents=sum(c for _, c in window),
        lifetime=len(purchases),
        lifetime_cents=sum(c for _, c in purchases),
        as_of=as_of,
    )


@settings(max_examples=200, deadline=None)
@given(purchase_lists, st.integers(0, DAY_MS * 3))
def test_nothing_changes_before_the_next_boundary(
    purchases: list[tuple[int, int]], jitter: int
) -> None:
    now = TODAY * DAY_MS + jitter
    days = [TODAY + off for off, _ in purchases]
    e = evaluate(summary_at(purchases, now), MEAN_3, TIERING, now, purchase_days=days)
    assume(e.next_boundary_ms is not None)
    assert e.next_boundary_ms > now
    just_before = e.next_boundary_ms - 1
    e_before = evaluate(
        summary_at(purchases, just_before), MEAN_3, TIERING, just_before, purchase_days=days
    )
    assert (e_before.scores, e_before.values(), e_before.raw) == (e.scores, e.values(), e.raw)
    at = e.next_boundary_ms
    e_at = evaluate(summary_at(purchases, at), MEAN_3, TIERING, at, purchase_days=days)
    # At the boundary the R score or the window contents move.
    assert (e_at.scores, e_at.raw) != (e.scores, e.raw)


@settings(max_examples=100, deadline=None)
@given(purchase_lists)
def test_with_no_boundary_left_nothing_ever_changes(purchases: list[tuple[int, int]]) -> None:
    now = TODAY * DAY_MS
    days = [TODAY + off for off, _ in purchases]
    e = evaluate(summary_at(purchases, now), MEAN_3, TIERING, now, purchase_days=days)
    assume(e.next_boundary_ms is None)
    for later in (now + 7 * DAY_MS, now + 400 * DAY_MS):
        e_later = evaluate(summary_at(purchases, later), MEAN_3, TIERING, later, purchase_days=days)
        assert (e_later.scores, e_later.values()) == (e.scores, e.values())


# --- evaluation and config -----------------------------------------------------------------


def test_evaluation_round_trips_through_json() -> None:
    e = evaluate(summary(recency=2, freq=3, spend_cents=12_345), MEAN_3, TIERING, NOW)
    assert msgspec.json.decode(msgspec.json.encode(e), type=Evaluation) == e


def test_summary_and_evaluation_must_share_the_instant() -> None:
    with pytest.raises(ValueError, match="as of"):
        evaluate(summary(recency=2, freq=1), MEAN_3, TIERING, NOW + 1)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[tiering.recency]\nthresholds = [5, 10, 10, 30]\n", "strictly ascending"),
        ("[tiering.frequency]\nthresholds = [2, 5, 10]\n", "strictly ascending"),
        ('[tiering.membership]\ntiers = [{ name = "a", min_points = 10 }]\n', "start at 0"),
        ('[tiering.lifecycle]\nvip_tiers = ["gold"]\n', "unknown tiers"),
        ('[tiering.recency]\nmode = "median"\n', "mode"),
        ("[tiering.points]\nper_interaction = { hug = 1 }\n", "hug"),
    ],
)
def test_bad_tiering_config_is_rejected_with_the_offending_key(
    tmp_path: Path, toml: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_window_must_be_one_the_state_store_keeps() -> None:
    check_against([30, 90], TIERING)
    with pytest.raises(ConfigError, match="window_days"):
        check_against([90], TIERING)
