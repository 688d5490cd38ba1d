"""The dashboard's own reports over the archive: sales (revenue, orders, average
order value) against the previous period, product categories without
non-product SKUs, and the public / private domain split of the funnel and the
tiers. SQL fetches rows (parameterised); plain functions shape them, so the
arithmetic is tested without a database.

Sales count each order once (archived duplicates and replays share the order
id), on the UTC day of its purchase event, at the order total the event
carries. The previous period is the same number of days just before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from tierflow.pipeline.archive import aipl
from tierflow.pipeline.archive.aipl import Funnel, Period
from tierflow.pipeline.archive.backend import Backend
from tierflow.pipeline.config.domain import Config
from tierflow.pipeline.dashboard.config import PRIVATE, PUBLIC

DELTA_DECIMALS = 6
AOV_DECIMALS = 2  # cents: an average is rarely a whole cent
BOTH, NEITHER = "both", "none"


@dataclass(frozen=True)
class Domains:
    """The channel map as SQL parameters: transform(channel, channels, domains, other)."""

    channels: list[str]
    domains: list[str]
    other: str

    @classmethod
    def of(cls, config: Config) -> Domains:
        channels, domains = config.dashboard.channel_map()
        return cls(channels, domains, config.dashboard.other_domain)

    def params(self) -> dict[str, Any]:
        return {"channels": self.channels, "domains": self.domains, "other": self.other}


def domain_of(column: str) -> str:
    """SQL: the domain of the channel in `column` (parameters: Domains.params())."""
    return f"transform({column}, {{channels:Array(String)}}, {{domains:Array(String)}}, {{other:String}})"



def non_product_skus(config: Config) -> list[str]:
    return sorted({config.tiering.membership.paid.sku, *config.dashboard.non_product_skus})


def previous(period: Period) -> Period:
    """The same number of days just before `period`."""
    days = (period.end - period.start).days + 1
    return Period(period.start - timedelta(days=days), period.start - timedelta(days=1))


def is_partial(period: Period, today: date) -> bool:
    """The period is not over yet: today (unfinished) or later days fall in it."""
    return period.end >= today


def partial_week(week: date, period: Period, today: date) -> bool:
    """A week of the trend counts fewer than 7 finished days: the period clips it,
    or it has not ended yet."""
    sunday = week + timedelta(days=6)
    return week < period.start or sunday > period.end or sunday >= today


def ratio_change(current: float, before: float) -> float | None:
    """(current - before) / before; None when there was nothing before."""
    return round((current - before) / before, DELTA_DECIMALS) if before else None


@dataclass(frozen=True)
class Sales:
    orders: int = 0
    revenue_cents: int = 0

    @property
    def aov_cents(self) -> float | None:
        return round(self.revenue_cents / self.orders, AOV_DECIMALS) if self.orders else None

    def __add__(self, other: Sales) -> Sales:
        return Sales(self.orders + other.orders, self.revenue_cents + other.revenue_cents)

    def to_json(self) -> dict[str, Any]:
        return {"orders": self.orders, "revenue_cents": self.revenue_cents, "aov_cents": self.aov_cents}


def deltas(current: Sales, before: Sales) -> dict[str, float | None]:
    return {
        "orders": ratio_change(current.orders, before.orders),
        "revenue_cents": ratio_change(current.revenue_cents, before.revenue_cents),
        "aov_cents": ratio_change(current.aov_cents or 0, before.aov_cents or 0),
    }


# One row per (domain, day) of orders in [prev_start, end]: each order once, net of its
# refunds (counted in the order's day, as the state counts them); an order refunded in
# full is no order.
_SALES_SQL = f"""
    SELECT {domain_of("order_channel")} AS domain, order_day, countIf(NOT refunded), sum(net)
    FROM (
        SELECT p.order_day AS order_day, p.order_channel AS order_channel,
               p.amount - if(r.order_id = '', 0, r.refunded_cents) AS net,
               r.order_id != '' AND r.full_refund AS refunded
        FROM (
            SELECT user_id, order_id, any(amount_cents) AS amount, min(day) AS order_day,
                   any(channel) AS order_channel
            FROM touch_events
            WHERE type = 'purchase' AND day BETWEEN {{prev_start:Date}} AND {{end:Date}}
            GROUP BY user_id, order_id
        ) AS p
        LEFT JOIN order_refunds_v AS r ON r.user_id = p.user_id AND r.order_id = p.order_id
    )
    GROUP BY domain, order_day
"""


def sales_rows(backend: Backend, period: Period, domains: Domains) -> list[tuple[str, date, int, int]]:
    rows = backend.query(_SALES_SQL, {"prev_start": previous(period).start, "end": period.end,
                                      **domains.params()})
    return [(str(d), day, int(n), int(cents)) for d, day, n, cents in rows]


def sales_summary(
    rows: Iterable[tuple[str, date, int, int]], period: Period, today: date
) -> dict[str, Any]:
    """Totals of the period and the one before, their changes, per domain and per week."""
    before = previous(period)
    current, earlier = Sales(), Sales()
    by_domain: dict[str, Sales] = {}
    by_week: dict[date, Sales] = {}
    for domain, day, orders, cents in rows:
        sales = Sales(orders, cents)
        if day < period.start:
            earlier += sales
            continue
        current += sales
        by_domain[domain] = by_domain.get(domain, Sales()) + sales
        week = aipl.monday(day)
        by_week[week] = by_week.get(week, Sales()) + sales
    weeks = []
    week = aipl.monday(period.start)
    while week <= period.end:
        weeks.append({"week": week.isoformat(), **by_week.get(week, Sales()).to_json(),
                      "partial": partial_week(week, period, today)})
        week += timedelta(days=7)
    return {
        "from": period.start.isoformat(), "to": period.end.isoformat(),
        "days": (period.end - period.start).days + 1,
        "partial": is_partial(period, today),
        **current.to_json(),
        "previous": {"from": before.start.isoformat(), "to": before.end.isoformat(),
                     **earlier.to_json()},
        "change": deltas(current, earlier),
        "domains": {d: s.to_json() for d, s in sorted(by_domain.items())},
        "weeks": weeks,
    }


def sales(backend: Backend, period: Period | None, domains: Domains, today: date) -> dict[str, Any]:
    if period is None:
        return {"from": None, "to": None, "partial": False, **Sales().to_json(), "previous": None,
                "change": deltas(Sales(), Sales()), "domains": {}, "weeks": []}
    return sales_summary(sales_rows(backend, period, domains), period, today)


def _ordered(groups: dict[str, Funnel]) -> dict[str, Any]:
    """Largest awareness first, as the archive's breakdowns are."""
    ranked = sorted(groups.items(), key=lambda kv: (-kv[1].awareness, kv[0]))
    return {key: funnel.to_json() for key, funnel in ranked}


# Per event (deduplicated by its id): whether it shows interest, its order id, and the
# product categories it names once lines and SKUs that are not products are dropped.
_PRODUCT_FUNNEL_SQL = """
    SELECT category, count(), countIf(engaged > 0), countIf(orders > 0), countIf(orders >= {loyal:UInt32})
    FROM (
        SELECT category, user_id,
               uniqExactIf(event_id, interested) AS engaged,
               uniqExactIf(event_order, is_purchase) AS orders
        FROM (
            SELECT user_id, event_id, any(type = 'purchase') AS is_purchase, any(order_id) AS event_order,
                   any(type IN ('interaction', 'purchase') OR (type = 'cart' AND action = 'add'))
                       AS interested,
                   any(if(type = 'purchase',
                          arrayDistinct(arrayFilter((c, s) -> NOT has({skus:Array(String)}, s),
                                                    items.category, items.sku)),
                          if(has({skus:Array(String)}, sku), [], categories))) AS product_categories
            FROM touch_events
            WHERE day BETWEEN {start:Date} AND {end:Date}
            GROUP BY user_id, event_id
        )
        ARRAY JOIN product_categories AS category
        WHERE category != ''
        GROUP BY category, user_id
    )
    GROUP BY category
"""


def product_categories(backend: Backend, period: Period | None, skus: Sequence[str]) -> dict[str, Any]:
    """The funnel per product category (the archive's category breakdown, without the
    lines and cart or browse events of `skus`)."""
    if period is None:
        return {}
    rows = backend.query(_PRODUCT_FUNNEL_SQL, {**period.params(), "skus": list(skus),
                                               "loyal": aipl.LOYAL_MIN_ORDERS})
    return _ordered({str(row[0]): Funnel(*map(int, row[1:])) for row in rows})


def domain_funnels(backend: Backend, period: Period | None, domains: Domains) -> dict[str, Any]:
    """The funnel per domain: a user counts in every domain whose channels they used."""
    if period is None:
        return {}
    sql = aipl._funnel_sql("aipl_user_daily", domain_of("channel"))  # the same funnel, by domain
    rows = backend.query(sql, {**period.params(), "loyal": aipl.LOYAL_MIN_ORDERS, **domains.params()})
    return _ordered({str(row[0]): Funnel(*map(int, row[1:])) for row in rows})


# Each user's latest value of a dimension on or before `end`, beside the domains of
# every channel they used up to then (none archived: an empty array).
_TIER_DOMAINS_SQL = f"""
    SELECT value, has(used, {{public:String}}) AS public, has(used, {{private:String}}) AS private,
           count()
    FROM (
        SELECT user_id, argMax(ifNull(new, ''), version) AS value
        FROM tier_changes
        WHERE dimension = {{dimension:String}} AND toDate(event_time) <= {{end:Date}}
        GROUP BY user_id
    ) AS tiers
    LEFT JOIN (
        SELECT user_id, groupUniqArray({domain_of("channel")}) AS used
        FROM aipl_user_daily
        WHERE day <= {{end:Date}}
        GROUP BY user_id
    ) AS seen USING (user_id)
    WHERE value != ''
    GROUP BY value, public, private
"""


def reach(public: bool, private: bool) -> str:
    """Where a customer was seen: public domain only, private only, both, or neither."""
    if public and private:
        return BOTH
    return PUBLIC if public else PRIVATE if private else NEITHER


def tier_domains(
    backend: Backend, end: date, dimension: str, domains: Domains
) -> dict[str, dict[str, int]]:
    """Users per current value of `dimension` at `end`, split by where they were seen."""
    rows = backend.query(_TIER_DOMAINS_SQL, {"end": end, "dimension": dimension, "public": PUBLIC,
                                             "private": PRIVATE, **domains.params()})
    out: dict[str, dict[str, int]] = {}
    for value, public, private, users in rows:
        split = out.setdefault(str(value), {PUBLIC: 0, PRIVATE: 0, BOTH: 0, NEITHER: 0})
        split[reach(bool(public), bool(private))] += int(users)
    return dict(sorted(out.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])))
