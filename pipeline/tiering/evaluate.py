"""One user's tiers from their state summary: every dimension, the scores behind
them, tags, and when they next change with no new event. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from tierflow.pipeline.state.summary import DAY_MS, Summary, day_of, iso
from tierflow.pipeline.tiering import membership as member
from tierflow.pipeline.tiering.aipl import aipl_stage
from tierflow.pipeline.tiering.config import TieringConfig
from tierflow.pipeline.tiering.lifecycle import Lifecycle, lifecycle
from tierflow.pipeline.tiering.rfm import (
    High,
    Population,
    RawRfm,
    Scores,
    high_low,
    next_recency_change_ms,
    score,
    segment_of,
)
from tierflow.pipeline.tiering.tags import tags

# The dimensions published on tier.changes, each with its own version counter.
TRACKED = ("segment", "lifecycle", "membership", "aipl")


class Evaluation(msgspec.Struct, frozen=True):
    user_id: str
    as_of_ms: int
    # None for a user without a purchase up to as_of: no RFM scores and no segment.
    raw: RawRfm | None
    scores: Scores | None
    high: High | None
    segment: str | None
    lifecycle: Lifecycle
    membership: member.Membership
    aipl: str | None
    tags: list[str]
    # Earliest later instant at which a value may change with no new event
    # (R threshold crossed, a purchase leaving the F/M window, a paid term starting or ending).
    next_boundary_ms: int | None

    def value(self, dimension: str) -> str | None:
        return self.values()[dimension]

    def values(self) -> dict[str, str | None]:
        """Each of TRACKED's value."""
        return {
            "segment": self.segment,
            "lifecycle": self.lifecycle.stage,
            "membership": self.membership.tier,
            "aipl": self.aipl,
        }

    def to_json(self) -> dict[str, object]:
        """The tier part of `tierflow user ID --json`."""
        s, h = self.scores, self.high
        paid_until = self.membership.paid_until_ms
        return {
            "scores": {"r": s.r, "f": s.f, "m": s.m} if s else {"r": None, "f": None, "m": None},
            "high": {"r": h.r, "f": h.f, "m": h.m} if h else {"r": None, "f": None, "m": None},
            "segment": self.segment,
            "lifecycle": self.lifecycle.stage,
            "repurchases": self.lifecycle.repurchases,
            "membership": {
                "tier": self.membership.tier,
                "points": self.membership.points,
                "offer_price": self.membership.offer_price,
                "paid_until": iso(paid_until) if paid_until is not None else None,
            },
            "aipl": self.aipl,
            "tags": self.tags,
            "next_boundary": iso(self.next_boundary_ms)
            if self.next_boundary_ms is not None
            else None,
        }


def _window_boundary_ms(
    purchase_days: Iterable[int], as_of_day: int, window_days: int
) -> int | None:
    """Next day start at which the F/M window gains (a purchase dated later than
    as_of) or loses (its oldest purchase day) a purchase."""
    times = [
        (d if d > as_of_day else d + window_days) * DAY_MS
        for d in purchase_days
        if d > as_of_day - window_days
    ]
    return min(times, default=None)


def evaluate(
    summary: Summary,
    population: Population,
    config: TieringConfig,
    now_ms: int,
    *,
    paid_purchases: Iterable[member.PaidPurchase] = (),
    purchase_days: Iterable[int] = (),
) -> Evaluation:
    """All dimensions as of now_ms (the summary must be as of the same instant).

    paid_purchases: the user's orders of the membership SKU; purchase_days: the
    days holding a purchase (the state store's day buckets), used only to know
    when the F/M window next changes.
    """
    if summary.as_of_ms != now_ms:
        raise ValueError(f"summary is as of {summary.as_of_ms}, evaluation as of {now_ms}")
    paid = list(paid_purchases)
    as_of_day = day_of(now_ms)
    purchases = summary.frequency.get("lifetime", 0)
    lifetime_cents = summary.monetary_cents.get("lifetime", 0)

    raw: RawRfm | None = None
    scores: Scores | None = None
    high: High | None = None
    segment: str | None = None
    boundaries: list[int | None] = [
        _window_boundary_ms(purchase_days, as_of_day, config.window_days)
    ]
    if summary.recency_days is not None:
        raw = RawRfm(
            last_purchase_day=as_of_day - summary.recency_days,
            frequency=summary.frequency[config.window_key],
            monetary_cents=summary.monetary_cents[config.window_key],
        )
        scores = score(raw, as_of_day, population, config)
        high = high_low(scores, population)
        segment = segment_of(high)
        boundaries.append(next_recency_change_ms(raw, as_of_day, population, config))

    points = member.points(lifetime_cents, summary.counts, config.points)
    membership = member.membership(points, paid, now_ms, config.membership)
    boundaries.append(member.next_change_ms(paid, now_ms, membership))
    stage = lifecycle(purchases, lifetime_cents, membership.tier, config.lifecycle)
    aipl = aipl_stage(summary.counts, purchases, config.aipl)

    tier_tags = [f"segment:{segment}"] if segment else []
    tier_tags += [f"lifecycle:{stage.stage}", f"membership:{membership.tier}"]
    tier_tags += [f"aipl:{aipl}"] if aipl else []
    return Evaluation(
        user_id=summary.user_id,
        as_of_ms=now_ms,
        raw=raw,
        scores=scores,
        high=high,
        segment=segment,
        lifecycle=stage,
        membership=membership,
        aipl=aipl,
        tags=tags(summary, config.tags) + tier_tags,
        next_boundary_ms=min((b for b in boundaries if b is not None and b > now_ms), default=None),
    )
