"""AIPL: how many customers the brand reached, engaged, sold to and kept.

Definitions, for a period of UTC calendar days [from, to], both inclusive
(docs/aipl.md says the same for readers of the README):

- Awareness (A): users with at least one touch event of any type in the period
  (browse, cart, interaction or purchase): the brand reached them.
- Interest (I): users with at least one add-to-cart, interaction (favourite,
  like, share, follow, coupon claim, campaign join, referral, sign-in, content
  read, comment, review) or purchase in the period. A buyer who never clicked
  anything was evidently interested, so buyers count here too; a cart removal
  alone does not count.
- Purchase (P): users with at least one purchase in the period.
- Loyalty (L): users with at least two distinct orders in the period (they
  repurchased within it).

So A >= I >= P >= L: each stage contains the next, and the conversion rates
A->I = I/A, I->P = P/I, P->L = L/P always lie in [0, 1] (null when the
denominator is 0; rounded to 6 decimals).

Breakdowns apply the same definitions to the events of one channel (a user is
counted in every channel where they had events) or of one category (only
events that name a category: browses with a category, cart events, and
purchases once per distinct line category; interactions carry no category).
The weekly trend applies them to each ISO week (Monday to Sunday) of the period.

Every count is a distinct count of users over uniqExact states of event and
order ids (tables aipl_user_daily / aipl_category_daily), so duplicate inserts
and replays never change a number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

from tierflow.pipeline.archive.backend import Backend

LOYAL_MIN_ORDERS = 2  # the definition of a repurchase, not a tunable
RATE_DECIMALS = 6

Breakdown = Literal["channel", "category"]
BREAKDOWNS: tuple[Breakdown, ...] = ("channel", "category")
_SOURCES = {
    "channel": ("aipl_user_daily", "channel"),
    "category": ("aipl_category_daily", "category"),
    "week": ("aipl_user_daily", "toMonday(day)"),
}


@dataclass(frozen=True)
class Period:
    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"period ends ({self.end}) before it starts ({self.start})")

    def params(self) -> dict[str, date]:
        return {"start": self.start, "end": self.end}


def rate(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, RATE_DECIMALS) if denominator else None


@dataclass(frozen=True)
class Funnel:
    awareness: int = 0
    interest: int = 0
    purchase: int = 0
    loyalty: int = 0

    @property
    def rates(self) -> dict[str, float | None]:
        return {
            "a_to_i": rate(self.interest, self.awareness),
            "i_to_p": rate(self.purchase, self.interest),
            "p_to_l": rate(self.loyalty, self.purchase),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "awareness": self.awareness,
            "interest": self.interest,
            "purchase": self.purchase,
            "loyalty": self.loyalty,
            "rates": self.rates,
        }


def _funnel_sql(table: str, key: str | None) -> str:
    inner_key = f"{key} AS g, " if key else ""
    group = "g, " if key else ""
    outer_key = "g, " if key else ""
    tail = "GROUP BY g ORDER BY g" if key else ""
    return f"""
        SELECT {outer_key}count(), countIf(engaged > 0), countIf(orders > 0),
               countIf(orders >= {{loyal:UInt32}})
        FROM (
            SELECT {inner_key}user_id,
                   uniqExactIfMerge(engaged) AS engaged,
                   uniqExactIfMerge(orders) AS orders
            FROM {table}
            WHERE day BETWEEN {{start:Date}} AND {{end:Date}}
            GROUP BY {group}user_id
        )
        {tail}
    """


def _params(period: Period) -> dict[str, Any]:
    return {**period.params(), "loyal": LOYAL_MIN_ORDERS}


def data_range(backend: Backend) -> Period | None:
    """First and last day with archived events, or None when there are none."""
    rows = backend.query("SELECT min(day), max(day), count() FROM aipl_user_daily")
    if not rows or not rows[0][2]:
        return None
    return Period(rows[0][0], rows[0][1])


def resolve(backend: Backend, start: date | None, end: date | None) -> Period | None:
    """The period asked for; open ends default to the archive's first/last day."""
    if start is not None and end is not None:
        return Period(start, end)
    known = data_range(backend)
    if known is None:
        return None
    return Period(start or known.start, end or known.end)


def funnel(backend: Backend, period: Period | None) -> Funnel:
    if period is None:
        return Funnel()
    rows = backend.query(_funnel_sql("aipl_user_daily", None), _params(period))
    return Funnel(*map(int, rows[0])) if rows else Funnel()


def breakdown(backend: Backend, by: Breakdown, period: Period | None) -> dict[str, Funnel]:
    """One funnel per channel or category, largest awareness first."""
    if period is None:
        return {}
    table, key = _SOURCES[by]
    rows = backend.query(_funnel_sql(table, key), _params(period))
    groups = {str(row[0]): Funnel(*map(int, row[1:])) for row in rows}
    return dict(sorted(groups.items(), key=lambda kv: (-kv[1].awareness, kv[0])))


def weekly_trend(backend: Backend, period: Period | None) -> list[tuple[date, Funnel]]:
    """One funnel per ISO week (keyed by its Monday), weeks without events as zeros.
    The first and last week only count the days inside the period."""
    if period is None:
        return []
    table, key = _SOURCES["week"]
    rows = backend.query(_funnel_sql(table, key), _params(period))
    return fill_weeks(period, ((row[0], Funnel(*map(int, row[1:]))) for row in rows))


def monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def fill_weeks(period: Period, weeks: Iterable[tuple[date, Funnel]]) -> list[tuple[date, Funnel]]:
    known = dict(weeks)
    out: list[tuple[date, Funnel]] = []
    week = monday(period.start)
    while week <= period.end:
        out.append((week, known.get(week, Funnel())))
        week += timedelta(days=7)
    return out


def report(
    backend: Backend, start: date | None, end: date | None, by: Breakdown | None = None
) -> dict[str, Any]:
    """What `tierflow aipl --json` prints and /api/aipl serves: one funnel, or one per group."""
    period = resolve(backend, start, end)
    if by is None:
        return funnel(backend, period).to_json()
    return {key: f.to_json() for key, f in breakdown(backend, by, period).items()}


def trend_report(backend: Backend, start: date | None, end: date | None) -> dict[str, Any]:
    period = resolve(backend, start, end)
    weeks = weekly_trend(backend, period)
    return {
        "from": period.start.isoformat() if period else None,
        "to": period.end.isoformat() if period else None,
        "weeks": [{"week": week.isoformat(), **f.to_json()} for week, f in weeks],
    }
