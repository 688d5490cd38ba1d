"""Membership (the 88VIP pattern): a points score from spending and activity,
tiers by points, the paid top tier's offer price, and its term.

Points come from lifetime totals, so they never fall; the paid tier is the only
part of membership that changes with time alone (it starts and expires).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from tierflow.pipeline.state.summary import DAY_MS
from tierflow.pipeline.tiering.config import MembershipConfig, PointsConfig, exact


class PaidPurchase(msgspec.Struct, frozen=True):
    """One order of the membership SKU: when, and how many terms it bought."""

    ts_ms: int
    qty: int


class Membership(msgspec.Struct, frozen=True):
    tier: str
    points: int
    # Yuan: what the paid tier costs this member now (88 or 888 by default).
    offer_price: float
    # End of the paid term (epoch ms) when the member ever bought it, else None.
    paid_until_ms: int | None
    paid_active: bool


def points(lifetime_cents: int, counts: Mapping[str, int], config: PointsConfig) -> int:
    """Spend points (rounded down) plus activity points from lifetime event counts."""
    rate = exact(config.per_yuan)
    # Rounded toward zero in integers (Fraction arithmetic is slow on the hot path).
    spend = abs(rate.numerator * lifetime_cents) // (rate.denominator * 100)
    if rate.numerator * lifetime_cents < 0:
        spend = -spend
    activity = config.per_browse * counts.get("browse", 0)
    activity += config.per_cart_add * counts.get("cart:add", 0)
    activity += sum(
        p * counts.get(f"interaction:{kind}", 0) for kind, p in config.per_interaction.items()
    )
    return spend + activity


def points_tier(score: int, config: MembershipConfig) -> str:
    return [t.name for t in config.tiers if score >= t.min_points][-1]


def offer_price(score: int, config: MembershipConfig) -> float:
    return [p.price for p in config.paid.prices if score >= p.min_points][-1]


def paid_until(purchases: Iterable[PaidPurchase], term_days: int) -> int | None:
    """Terms run back to back: a purchase during a term extends it, one after it
    starts afresh. Computed from the whole set in time order, so it does not
    depend on the order the purchases arrived in."""
    until: int | None = None
    for purchase in sorted(purchases, key=lambda p: (p.ts_ms, p.qty)):
        start = purchase.ts_ms if until is None else max(until, purchase.ts_ms)
        until = start + purchase.qty * term_days * DAY_MS
    return until


def membership(
    score: int, purchases: Iterable[PaidPurchase], now_ms: int, config: MembershipConfig
) -> Membership:
    """Purchases after now_ms are not yet effective (see `next_change_ms`)."""
    until = paid_until((p for p in purchases if p.ts_ms <= now_ms), config.paid.term_days)
    active = until is not None and until > now_ms
    return Membership(
        tier=config.paid.name if active else points_tier(score, config),
        points=score,
        offer_price=offer_price(score, config),
        paid_until_ms=until,
        paid_active=active,
    )


def next_change_ms(
    purchases: Iterable[PaidPurchase], now_ms: int, current: Membership
) -> int | None:
    """The next instant the paid tier starts or ends with no new event."""
    times = [p.ts_ms for p in purchases if p.ts_ms > now_ms]
    if current.paid_active and current.paid_until_ms is not None:
        times.append(current.paid_until_ms)
    return min(times, default=None)
