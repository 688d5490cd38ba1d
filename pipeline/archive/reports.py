"""Tier, segment-migration, reward and status reports over the archive tables.

Every query dedupes by the record's identity ((dimension, user, version) for
tier changes, (kind, record_id) for reward records) instead of trusting
merges, so duplicates delivered by replays never show.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from tierflow.pipeline.archive.aipl import Period, data_range
from tierflow.pipeline.archive.backend import Backend

GRANT, CANCELLATION, REDEMPTION = "grant", "cancellation", "redemption"


def tier_distribution(backend: Backend, as_of: date | None) -> dict[str, dict[str, int]]:
    """Users per current value of each dimension (segment, lifecycle, membership,
    aipl, ...), from each user's latest change on or before `as_of`."""
    where = "WHERE toDate(event_time) <= {end:Date}" if as_of is not None else ""
    rows = backend.query(
        f"""
        SELECT dimension, value, count() AS users
        FROM (
            SELECT dimension, user_id, argMax(ifNull(new, ''), version) AS value
            FROM tier_changes {where}
            GROUP BY dimension, user_id
        )
        WHERE value != ''
        GROUP BY dimension, value
        ORDER BY dimension, users DESC, value
        """,
        {"end": as_of} if as_of is not None else None,
    )
    out: dict[str, dict[str, int]] = {}
    for dimension, value, users in rows:
        out.setdefault(str(dimension), {})[str(value)] = int(users)
    return out


def segment_migration(backend: Backend, period: Period, dimension: str) -> list[dict[str, Any]]:
    """Net moves in one dimension over the period: for every user who changed in
    it, the value held just before the period -> the value at its end (None: no
    value, e.g. a user who had not bought yet). Users who came back to where
    they started are left out."""
    rows = backend.query(
        """
        SELECT from_v, to_v, count() AS users
        FROM (
            SELECT user_id,
                   argMaxIf(ifNull(new, ''), version, toDate(event_time) < {start:Date}) AS from_v,
                   argMax(ifNull(new, ''), version) AS to_v,
                   countIf(toDate(event_time) >= {start:Date}) AS moves
            FROM tier_changes
            WHERE dimension = {dimension:String} AND toDate(event_time) <= {end:Date}
            GROUP BY user_id
        )
        WHERE moves > 0 AND from_v != to_v
        GROUP BY from_v, to_v
        ORDER BY users DESC, from_v, to_v
        """,
        {**period.params(), "dimension": dimension},
    )
    return [{"from": f or None, "to": t or None, "users": int(n)} for f, t, n in rows]


def rewards_summary(
    backend: Backend, period: Period | None, budgets: Mapping[str, int | None]
) -> dict[str, Any]:
    """Per campaign: grants, budget charged (cost_cents of every record: grants and
    referral step-ups) against the configured budget, cancellations, redemptions
    with the discount given and the order value they brought, points granted.
    Campaigns in `budgets` appear even before their first grant."""
    where = "WHERE toDate(at) BETWEEN {start:Date} AND {end:Date}" if period else ""
    rows = backend.query(
        f"""
        SELECT campaign, kind, prize_type, count(), sum(cost_cents), sum(points_delta),
               sum(discount_cents), sum(order_cents)
        FROM (
            SELECT kind, record_id,
                   any(campaign) AS campaign, any(prize_type) AS prize_type,
                   any(cost_cents) AS cost_cents, any(points_delta) AS points_delta,
                   any(discount_cents) AS discount_cents, any(order_cents) AS order_cents
            FROM reward_grants {where}
            GROUP BY kind, record_id
        )
        GROUP BY campaign, kind, prize_type
        ORDER BY campaign, kind, prize_type
        """,
        period.params() if period else None,
    )

    def blank(campaign: str) -> dict[str, Any]:
        return {
            "campaign": campaign, "budget_cents": budgets.get(campaign), "spent_cents": 0,
            "grants": 0, "cancellations": 0, "redemptions": 0, "discount_cents": 0,
            "redeemed_order_cents": 0, "points_granted": 0,
        }

    campaigns = {cid: blank(cid) for cid in budgets}
    by_prize: dict[str, int] = {}
    for campaign, kind, prize, n, cost, points, discount, orders in rows:
        c = campaigns.setdefault(str(campaign), blank(str(campaign)))
        c["spent_cents"] += int(cost)
        if kind == GRANT:
            c["grants"] += int(n)
            c["points_granted"] += int(points)
            by_prize[str(prize)] = by_prize.get(str(prize), 0) + int(n)
        elif kind == CANCELLATION:
            c["cancellations"] += int(n)
        elif kind == REDEMPTION:
            c["redemptions"] += int(n)
            c["discount_cents"] += int(discount)
            c["redeemed_order_cents"] += int(orders)
    ordered = sorted(campaigns.values(), key=lambda c: (-c["spent_cents"], c["campaign"]))
    return {"campaigns": ordered, "by_prize": dict(sorted(by_prize.items()))}


def archive_summary(backend: Backend) -> dict[str, Any]:
    """Row counts and the day range of the archive, for the status endpoint."""
    known = data_range(backend)
    (events,), = backend.query(
        "SELECT count() FROM (SELECT 1 FROM touch_events GROUP BY user_id, event_id)"
    )
    (changes,), = backend.query("SELECT count() FROM tier_changes")
    (grants,), = backend.query("SELECT count() FROM reward_grants")
    return {
        "backend": getattr(backend, "kind", "unknown"),
        "where": getattr(backend, "display", ""),
        "first_day": known.start.isoformat() if known else None,
        "last_day": known.end.isoformat() if known else None,
        "events": int(events),
        "tier_change_rows": int(changes),
        "reward_rows": int(grants),
    }
