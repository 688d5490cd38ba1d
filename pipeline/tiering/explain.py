"""Why a user holds each tier value: the rule that decided it and its inputs (the `why`
of a tier.changes record; docs/domain.md, "Explanations"). Pure: from an evaluation,
the population it was scored against and the configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from tierflow.pipeline.state.summary import day_of, iso
from tierflow.pipeline.tiering.config import TieringConfig
from tierflow.pipeline.tiering.evaluate import TRACKED, Evaluation
from tierflow.pipeline.tiering.grace import Graced
from tierflow.pipeline.tiering.rfm import Population, cuts_in_use
from tierflow.schemas.tier_changes import Factor, Why

CENTS_PER_YUAN = 100


def _yuan(cents: int) -> int | float:
    return cents // CENTS_PER_YUAN if cents % CENTS_PER_YUAN == 0 else cents / CENTS_PER_YUAN


def _reached_at_least(value: int, minimums: list[int]) -> int | None:
    """The highest ascending minimum the value reaches (what `score_at_least` counted last)."""
    return max((b for b in minimums if value >= b), default=None)


def rfm_factors(e: Evaluation, population: Population, config: TieringConfig) -> dict[str, Factor]:
    """R, F and M with the bound that decided each score; {} for a user without a purchase."""
    if e.raw is None or e.scores is None or e.high is None:
        return {}
    as_of_day = day_of(e.as_of_ms)
    days = as_of_day - e.raw.last_purchase_day
    cuts_r = cuts_in_use(config, population, "r")
    if cuts_r:
        # Quantile cuts are last-purchase days: reaching cut c means at most as_of_day - c days.
        cut = _reached_at_least(e.raw.last_purchase_day, cuts_r)
        r_bound = None if cut is None else as_of_day - cut
    else:
        r_bound = min((b for b in config.recency.thresholds if days <= b), default=None)
    f_bound = _reached_at_least(e.raw.frequency, cuts_in_use(config, population, "f") or config.frequency.thresholds)
    m_bound = _reached_at_least(
        e.raw.monetary_cents, cuts_in_use(config, population, "m") or config.monetary.thresholds_cents
    )
    return {
        "r": Factor(days, e.scores.r, e.high.r, r_bound, population.mean("r")),
        "f": Factor(e.raw.frequency, e.scores.f, e.high.f, f_bound, population.mean("f")),
        "m": Factor(_yuan(e.raw.monetary_cents), e.scores.m, e.high.m,
                    None if m_bound is None else _yuan(m_bound), population.mean("m")),
    }


def _segment(e: Evaluation, population: Population, config: TieringConfig) -> Why:
    factors = rfm_factors(e, population, config)
    if not factors:
        return Why("no_purchase", purchases=0)
    return Why("rfm", r=factors["r"], f=factors["f"], m=factors["m"])


def _lifecycle(e: Evaluation, config: TieringConfig) -> Why:
    stage, spend_cents = e.lifecycle.stage, e.lifecycle.spend_cents
    purchases = e.lifecycle.repurchases + 1 if stage != "new" else 0
    spend = _yuan(spend_cents)
    rules = config.lifecycle
    if stage == "vip" and e.membership.tier in rules.vip_tiers:
        return Why("vip_tier", purchases=purchases, spend=spend)
    if stage == "vip":
        bounds = {"min_repurchases": rules.vip_min_repurchases, "min_spend": _yuan(rules.vip_min_spend_cents)}
        return Why("vip_spend", purchases=purchases, spend=spend, bounds=bounds)
    rule = {"new": "no_purchase", "first_purchase": "first_purchase"}.get(stage, "repurchases")
    return Why(rule, purchases=purchases, spend=spend)


def _membership(e: Evaluation, config: TieringConfig) -> Why:
    m = e.membership
    paid_until = None if m.paid_until_ms is None else iso(m.paid_until_ms)
    if m.paid_active:
        return Why("paid_term", points=m.points, paid_until=paid_until)
    reached = max(t.min_points for t in config.membership.tiers if t.name == m.tier)
    return Why("points_tier", points=m.points, paid_until=paid_until, bounds={"min_points": reached})


def _aipl(e: Evaluation, config: TieringConfig) -> Why:
    purchases = e.lifecycle.repurchases + 1 if e.lifecycle.stage != "new" else 0
    if e.aipl == "loyalty" and purchases >= config.aipl.loyalty_min_purchases:
        return Why("loyalty_purchases", purchases=purchases,
                   bounds={"min_purchases": config.aipl.loyalty_min_purchases})
    if e.aipl == "loyalty":
        return Why("loyalty_advocacy", purchases=purchases)
    return Why(e.aipl or "no_event", purchases=purchases)


def changing(stored: Mapping[str, str], e: Evaluation) -> list[str]:
    """The dimensions whose value differs from the stored one (`v:<dimension>` fields, absent
    for none): the only ones a commit may publish, so the only ones worth explaining."""
    return [dim for dim, value in e.values().items() if stored.get(f"v:{dim}") != value]


def explain(
    e: Evaluation,
    population: Population,
    config: TieringConfig,
    dimensions: Iterable[str] = TRACKED,
    trigger: tuple[str, str] | None = None,
) -> dict[str, Why]:
    """Why of each of these dimensions' values; `trigger` (event id, type) when new events
    caused the evaluation."""
    out: dict[str, Why] = {}
    for dim in dimensions:
        if dim == "segment":
            why = _segment(e, population, config)
        elif dim == "lifecycle":
            why = _lifecycle(e, config)
        elif dim == "membership":
            why = _membership(e, config)
        else:
            why = _aipl(e, config)
        if trigger is not None:
            why = msgspec.structs.replace(why, event_id=trigger[0], event_type=trigger[1])
        out[dim] = why
    return out


def explain_graced(
    g: Graced, stored: Mapping[str, str], population: Population, config: TieringConfig,
    trigger: tuple[str, str] | None = None,
) -> tuple[dict[str, Why], list[dict[str, object]]]:
    """The explanations of the dimensions about to change (a released downgrade says since
    when it was held), and the notices to publish, each with its explanation."""
    why = explain(g.actual, population, config, changing(stored, g.evaluation), trigger)
    for dim, since in g.released.items():
        if dim in why:
            why[dim] = msgspec.structs.replace(why[dim], held_since=iso(since))
    notices: list[dict[str, object]] = []
    for n in g.notices:
        reason = explain(g.actual, population, config, [n.dimension], trigger)[n.dimension]
        notices.append({
            "dimension": n.dimension, "held": n.held, "at": iso(n.at_ms),
            "why": msgspec.structs.replace(reason, held_since=iso(n.since_ms), downgrade_to=n.to,
                                           downgrade_at=iso(n.downgrade_ms)),
        })
    return why, notices
