"""Uplift of campaigns with a control group: treated against held-out customers.

Each customer counts from their assignment (the trigger that first put them in
the campaign, campaign_assignments), in the arm recorded then. After it, over the
whole archive or the `days` that follow: did they buy (purchase rate; an order
refunded in full is no purchase), and how much (revenue per customer: each order once,
net of its refunds, order_refunds_v).
SQL fetches each arm's sums (parameterised); `compare` does the arithmetic.

Intervals are 95% normal-approximation (Wald) intervals of a difference between
two independent means, with unpooled variances (Welch's standard error): for the
purchase rate sqrt(p1(1-p1)/n1 + p0(1-p0)/n0), for revenue per customer
sqrt(s1²/n1 + s0²/n0) with sample variances. They need two customers in each arm,
and are trustworthy from a few dozen buyers in each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tierflow.pipeline.archive.backend import Backend

# Two-sided 95%: the standard normal's 97.5th percentile.
Z_95 = 1.959963984540054
METHOD = "95% normal-approximation interval of the difference, unpooled (Welch) standard error"
ARMS = ("treated", "control")
# A sample variance needs two customers in an arm.
MIN_CUSTOMERS = 2

_WINDOW = "AND o.ts < a.at + toIntervalDay({days:UInt32})"
_SQL = """
WITH assigned AS (
    SELECT campaign, user_id, argMin(arm, assigned_at) AS arm, min(assigned_at) AS at
    FROM campaign_assignments
    GROUP BY campaign, user_id
),
orders AS (
    SELECT p.user_id AS user_id, p.ts AS ts, if(r.order_id = '', p.amount_cents, r.net_cents) AS amount_cents,
           r.order_id != '' AND r.full_refund AS refunded
    FROM (
        SELECT user_id, order_id, min(ts) AS ts, any(amount_cents) AS amount_cents
        FROM touch_events
        WHERE type = 'purchase'
        GROUP BY user_id, order_id
    ) AS p
    LEFT JOIN order_refunds_v AS r ON r.user_id = p.user_id AND r.order_id = p.order_id
)
SELECT campaign, arm, count(), countIf(bought > 0), sum(spent), sum(toFloat64(spent) * spent)
FROM (
    SELECT a.campaign AS campaign, a.user_id AS user_id, a.arm AS arm,
           countIf(o.ts >= a.at AND NOT o.refunded {window}) AS bought,
           sumIf(o.amount_cents, o.ts >= a.at {window}) AS spent
    FROM assigned AS a
    LEFT JOIN orders AS o ON o.user_id = a.user_id
    GROUP BY a.campaign, a.user_id, a.arm
)
GROUP BY campaign, arm
ORDER BY campaign, arm
"""


@dataclass(frozen=True)
class ArmSums:
    customers: int
    buyers: int
    revenue_cents: int
    revenue_sq: float  # sum over customers of their revenue squared (cents²)


def arm_sums(backend: Backend, days: int | None = None) -> dict[str, dict[str, ArmSums]]:
    """campaign -> arm -> sums, for purchases after each customer's assignment
    (within `days` of it when given)."""
    rows = backend.query(_SQL.format(window=_WINDOW if days is not None else ""),
                         {"days": days} if days is not None else None)
    found: dict[str, dict[str, ArmSums]] = {}
    for campaign, arm, customers, buyers, revenue, revenue_sq in rows:
        found.setdefault(str(campaign), {})[str(arm)] = ArmSums(int(customers), int(buyers), int(revenue),
                                                                 float(revenue_sq))
    return found


def _mean_and_variance(total: float, squares: float, n: int) -> tuple[float, float]:
    """Mean and sample variance (n - 1) from a sum and a sum of squares."""
    mean = total / n
    return mean, max(squares - n * mean * mean, 0.0) / (n - 1) if n > 1 else 0.0


def difference(treated: tuple[float, float, int], control: tuple[float, float, int]) -> dict[str, float | None]:
    """(mean, variance, n) of each arm -> the difference of means with its 95% interval."""
    (m1, v1, n1), (m0, v0, n0) = treated, control
    diff = m1 - m0
    if min(n1, n0) < MIN_CUSTOMERS:
        return {"difference": diff, "low": None, "high": None}
    half = Z_95 * math.sqrt(v1 / n1 + v0 / n0)
    return {"difference": diff, "low": diff - half, "high": diff + half}


def _arm_doc(sums: ArmSums) -> dict[str, Any]:
    n = sums.customers
    return {"customers": n, "buyers": sums.buyers, "revenue_cents": sums.revenue_cents,
            "purchase_rate": sums.buyers / n if n else None,
            "revenue_per_customer_cents": sums.revenue_cents / n if n else None}


def compare(arms: dict[str, ArmSums]) -> dict[str, Any]:
    """One campaign's arms and the uplift of treated over control (None while an arm is empty)."""
    empty = ArmSums(0, 0, 0, 0.0)
    treated, control = (arms.get(arm, empty) for arm in ARMS)
    doc: dict[str, Any] = {"treated": _arm_doc(treated), "control": _arm_doc(control),
                           "purchase_rate_uplift": None, "revenue_per_customer_uplift_cents": None}
    if treated.customers and control.customers:
        def rate(s: ArmSums) -> tuple[float, float, int]:
            p = s.buyers / s.customers
            return p, p * (1 - p), s.customers  # Bernoulli variance (Wald)

        def revenue(s: ArmSums) -> tuple[float, float, int]:
            return (*_mean_and_variance(s.revenue_cents, s.revenue_sq, s.customers), s.customers)

        doc["purchase_rate_uplift"] = difference(rate(treated), rate(control))
        doc["revenue_per_customer_uplift_cents"] = difference(revenue(treated), revenue(control))
    return doc


def report(backend: Backend, holdouts: dict[str, float], days: int | None = None) -> dict[str, Any]:
    """Per campaign with a control group configured or assignments archived."""
    sums = arm_sums(backend, days)
    campaigns = [{"campaign": cid, "holdout_percent": holdouts.get(cid), **compare(sums.get(cid, {}))}
                 for cid in sorted({*holdouts, *sums})]
    return {"days": days, "method": METHOD, "campaigns": campaigns}
