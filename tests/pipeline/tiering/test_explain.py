"""Explanations: the pure part (every score's bound is the one that decided it, every rule
names what holds) and, against a real Redis, the `why` of the records a known sequence of
events and a time decay produce."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pipeline.tiering.test_store import DAY0, T0, World, config_with
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.state.summary import DAY_MS
from tierflow.pipeline.tiering.evaluate import TRACKED, Evaluation
from tierflow.pipeline.tiering.explain import changing, explain, rfm_factors
from tierflow.pipeline.tiering.lifecycle import Lifecycle
from tierflow.pipeline.tiering.membership import Membership
from tierflow.pipeline.tiering.rfm import Population, RawRfm, high_low, score, score_at_least, score_at_most
from tierflow.schemas.tier_changes import ChangeScores, Factor, TierChange, Why

CONFIG = load_config().tiering
AS_OF_DAY = DAY0 + 400


def evaluation(raw: RawRfm | None, population: Population, *, tier: str = "ordinary", points: int = 0,
               stage: str = "first_purchase", repurchases: int = 0, spend_cents: int = 0,
               aipl: str | None = "purchase") -> Evaluation:
    scores = score(raw, AS_OF_DAY, population, CONFIG) if raw else None
    return Evaluation(
        user_id="u", as_of_ms=AS_OF_DAY * DAY_MS, raw=raw, scores=scores,
        high=high_low(scores, population) if scores else None, segment=None,
        lifecycle=Lifecycle(stage, repurchases, spend_cents),
        membership=Membership(tier, points, 888.0, None, False), aipl=aipl, tags=[], next_boundary_ms=None,
    )


raws = st.builds(RawRfm, last_purchase_day=st.integers(AS_OF_DAY - 60, AS_OF_DAY),
                 frequency=st.integers(1, 30), monetary_cents=st.integers(1, 400_000))
populations = st.builds(Population, counts=st.fixed_dictionaries(
    {d: st.lists(st.integers(0, 50), min_size=5, max_size=5) for d in "rfm"}))


@settings(max_examples=300, deadline=None)
@given(raws, populations)
def test_each_factors_bound_is_the_threshold_that_gave_its_score(raw: RawRfm, population: Population) -> None:
    e = evaluation(raw, population)
    factors = rfm_factors(e, population, CONFIG)
    r, f, m = factors["r"], factors["f"], factors["m"]
    assert (r.value, f.value, m.value * 100) == (AS_OF_DAY - raw.last_purchase_day, raw.frequency,
                                                  pytest.approx(raw.monetary_cents))
    # Scoring the bound itself gives the same score: the bound is inside the score's band ...
    for factor, scored in ((r, lambda v: score_at_most(v, CONFIG.recency.thresholds)),
                           (f, lambda v: score_at_least(v, CONFIG.frequency.thresholds)),
                           (m, lambda v: score_at_least(round(v * 100), CONFIG.monetary.thresholds_cents))):
        assert (factor.bound is None) == (factor.score == 1)
        if factor.bound is not None:
            assert scored(factor.bound) == factor.score
    # ... and the score's high/low is against the mean quoted.
    for dim, factor in factors.items():
        mean = population.mean(dim)
        assert factor.mean == mean
        assert factor.high == (mean is not None and factor.score > mean)


def test_quantile_recency_bound_is_given_in_days() -> None:
    config = msgspec.structs.replace(CONFIG, recency=msgspec.structs.replace(CONFIG.recency, mode="quantiles"))
    cuts = [AS_OF_DAY - 40, AS_OF_DAY - 20, AS_OF_DAY - 10, AS_OF_DAY - 3]
    population = Population(counts={"r": [1, 1, 1, 1, 1]}, cuts={"r": cuts})
    raw = RawRfm(AS_OF_DAY - 12, 1, 100)
    e = evaluation(raw, population)
    e = msgspec.structs.replace(e, scores=score(raw, AS_OF_DAY, population, config))
    r = rfm_factors(e, population, config)["r"]
    assert (r.value, r.score, r.bound) == (12, 3, 20)  # reached the cut "at most 20 days ago"


def test_rules_name_what_decided_each_dimension() -> None:
    population = Population()
    vip = evaluation(RawRfm(AS_OF_DAY, 3, 600_000), population, tier="super", points=6000,
                     stage="vip", repurchases=2, spend_cents=600_000, aipl="loyalty")
    why = explain(vip, population, CONFIG, trigger=("e9", "purchase"))
    assert why["lifecycle"] == Why("vip_spend", purchases=3, spend=6000,
                                   bounds={"min_repurchases": 2, "min_spend": 5000},
                                   event_id="e9", event_type="purchase")
    assert why["membership"].rule == "points_tier" and why["membership"].bounds == {"min_points": 1000}
    assert why["aipl"].rule == "loyalty_purchases" and why["aipl"].bounds == {"min_purchases": 2}
    assert why["segment"].rule == "rfm" and why["segment"].m == Factor(6000, 5, False, 2000, None)
    nobody = evaluation(None, population, stage="new", aipl=None)
    assert [w.rule for w in explain(nobody, population, CONFIG).values()] == [
        "no_purchase", "no_purchase", "points_tier", "no_event"]


def test_only_the_dimensions_that_differ_from_the_stored_values_are_explained() -> None:
    e = evaluation(None, Population(), stage="new", aipl="aware")
    assert changing({}, e) == ["lifecycle", "membership", "aipl"]  # no segment before and after
    assert changing({"v:lifecycle": "new", "v:membership": "ordinary", "v:aipl": "aware"}, e) == []
    assert changing({"v:segment": "general_value"}, e) == list(TRACKED)  # the segment is gone


@pytest.fixture
def world(redis_url: str) -> Iterator[World]:
    w = World(redis_url, config_with())
    yield w
    w.client.close()


def by_dimension(records: list[TierChange]) -> dict[str, list[TierChange]]:
    out: dict[str, list[TierChange]] = {}
    for record in records:
        out.setdefault(record.dimension, []).append(record)
    return out


def test_the_records_of_a_known_sequence_say_why(world: World) -> None:
    first = world.browse("u1", T0)
    world.ingest([first], T0)
    buy = world.purchase("u1", T0 + 1000, 1200.0)
    world.ingest([world.browse("u1", T0 + 500), buy], T0 + 1000)
    world.ingest([world.purchase("u2", T0 - 40 * DAY_MS, 50.0)], T0 + 1000)  # R=1: u1's R=5 is high
    world.tiers.stats.snapshot_means(T0 + 2000)
    world.tiers.sweep(T0 + 2000)
    # Twelve days without a purchase: R falls from 5 (at most 5 days) to 3 (at most 20), the mean 3.
    world.tiers.tick(T0 + 12 * DAY_MS)
    records = by_dimension(world.records("u1"))

    assert records["aipl"][0].why == Why("aware", purchases=0, event_id=first.event.event_id, event_type="browse")
    lifecycle = records["lifecycle"][-1]
    assert (lifecycle.old, lifecycle.new, lifecycle.reason) == ("new", "first_purchase", "event")
    assert lifecycle.why == Why("first_purchase", purchases=1, spend=1200,
                                event_id=buy.event.event_id, event_type="purchase")
    membership = records["membership"][-1]
    assert (membership.old, membership.new) == ("ordinary", "super")
    assert membership.why == Why("points_tier", points=1200, bounds={"min_points": 1000},
                                 event_id=buy.event.event_id, event_type="purchase")
    entered, shifted, decayed = records["segment"][:3]
    assert entered.why is not None and entered.why.event_id == buy.event.event_id and entered.why.prev is None
    assert (entered.why.r, entered.why.m) == (Factor(0, 5, False, 5), Factor(1200, 4, False, 1000))
    assert (shifted.reason, shifted.new) == ("means_shift", "important_develop")
    assert shifted.why is not None and shifted.why.r == Factor(0, 5, True, 5, 3.0)
    assert (decayed.reason, decayed.old, decayed.new) == ("time_decay", "important_develop", "important_win_back")
    assert decayed.why == Why("rfm", r=Factor(12, 3, False, 20, 3.0), f=Factor(1, 1, False, None, 1.0),
                              m=Factor(1200, 4, True, 1000, 2.5), prev=ChangeScores(5, 1, 4))
