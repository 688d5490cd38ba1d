"""Tier, segment-migration, reward and status reports over the archive tables.

Every query dedupes by the record's identity ((dimension, user, version) for
tier changes, (kind, record_id) for reward records) instead of trusting
merges, so duplicates delivered by replays never show.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from pipeline.archive.aipl import Period, data_range
from pipeline.archive.backend import Backend

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


def rewards_summary(backend: Backend, period: Period | None) -> dict[str, Any]:
    """Per campaign: grants and their money value, cancellations, redemptions,
    points, and the budget the records state; grants per prize type."""
    where = "WHERE toDate(event_time) BETWEEN {start:Date} AND {end:Date}" if period else ""
    rows = backend.query(
        f"""
        SELECT campaign, kind, prize_type, count(), sum(value_cents), sum(points), max(budget_cents)
        FROM (
            SELECT kind, record_id,
                   any(campaign) AS campaign, any(prize_type) AS prize_type,
                   any(value_cents) AS value_cents, any(points) AS points,
                   max(budget_cents) AS budget_cents
            FROM reward_grants {where}
            GROUP BY kind, record_id
        )
        GROUP BY campaign, kind, prize_type
        ORDER BY campaign, kind, prize_type
        """,
        period.params() if period else None,
    )
    campaigns: dict[str, dict[str, Any]] = {}
    by_prize: dict[str, int] = {}
    for campaign, kind, prize, n, cents, points, budget in rows:
        c = campaigns.setdefault(str(campaign), {
            "campaign": str(campaign), "granted": 0, "granted_cents": 0, "cancelled": 0,
            "cancelled_cents": 0, "redeemed": 0, "points": 0, "budget_cents": None,
        })
        if budget is not None:
            c["budget_cents"] = max(int(budget), c["budget_cents"] or 0)
        if kind == GRANT:
            c["granted"] += int(n)
            c["granted_cents"] += int(cents)
            c["points"] += int(points)
            by_prize[str(prize)] = by_prize.get(str(prize), 0) + int(n)
        elif kind == CANCELLATION:
            c["cancelled"] += int(n)
            c["cancelled_cents"] += int(cents)
        elif kind == REDEMPTION:
            c["redeemed"] += int(n)
    for c in campaigns.values():
        c["net_cents"] = c["granted_cents"] - c["cancelled_cents"]
    ordered = sorted(campaigns.values(), key=lambda c: (-c["net_cents"], c["campaign"]))
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
