"""Every example query of docs/bi.md, run as a BI user would (read-only, through the
same path as `tierflow sql`) against an archive filled with a synthetic population,
tier changes and reward records. Every statement must run and return rows (the
data has something for each), and the ones with a known answer must give it: the
funnel, outstanding points, the segment distribution, campaign spend, daily
revenue, time-decay downgrades, checked against computations over the same
records made here."""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.archive import (
    aipl_truth,
    archive_context,
    archive_directly,
    drop_if_server,
    event_day,
    tier_change,
    touch_topic,
)
from tests.fixtures.paths import ROOT
from tierflow.pipeline.archive.backend import Table
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.archive.migrate import split_statements
from tierflow.pipeline.archive.sql import read_only_statement
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.demo.synth import Population

BI_DOC = ROOT / "docs" / "bi.md"
DAY_MS = 86_400_000
SEGMENTS = ("important_value", "general_develop", "important_retain", "general_win_back")
PLACEHOLDER = re.compile(r"\{(\w+):([^}]+)\}")


def documented_queries() -> list[str]:
    """The statements of every ```sql block of docs/bi.md, but the schema a cluster
    operator creates (DDL, not queries)."""
    text = BI_DOC.read_text()
    cluster = text.index("## On a ClickHouse cluster")
    end = text.index("\n## ", cluster + 1)
    text = text[:cluster] + text[end:]
    blocks = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    return [s for block in blocks for s in split_statements(block)]


def ms_of(day: date, hour: int = 12) -> int:
    return int(datetime(day.year, day.month, day.day, hour, tzinfo=UTC).timestamp() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Demo:
    """Touch events of a synthetic population, tier changes and reward records for its
    users, and the answers the documented queries should give over them."""

    def __init__(self) -> None:
        now_ms = int(time.time() * 1000)
        self.events = list(Population(250, 60, now_ms, seed=77, run="bi").events())
        self.users = sorted({e["user_id"] for e in self.events})
        self.today = datetime.now(UTC).date()
        self.changes: list[dict] = []
        self.records: list[dict] = []
        for n, user in enumerate(self.users):
            self._tiers(n, user)
            self._rewards(n, user)

    def _tiers(self, n: int, user: str) -> None:
        first = SEGMENTS[n % 2]
        start = ms_of(self.today - timedelta(days=50 - n % 20))
        self.changes.append(tier_change(user, "segment", None, first, "event", 1, iso(start)))
        if n % 3 == 0:  # moved within the quarter
            self.changes.append(tier_change(user, "segment", first, SEGMENTS[2 + n % 2], "event", 2,
                                            iso(start + 10 * DAY_MS)))
        if n % 5 == 0:  # a downgrade by time decay, days ago
            self.changes.append(tier_change(user, "lifecycle", "repeat", "first_purchase", "time_decay", 1,
                                            iso(ms_of(self.today - timedelta(days=2)))))

    def _rewards(self, n: int, user: str) -> None:
        at = ms_of(self.today - timedelta(days=20 - n % 10))
        campaign = ("welcome", "winback")[n % 2]
        base = {"user_id": user, "campaign": campaign, "rule": f"{campaign}-r", "at_ms": at, "recorded_ms": at}
        lot = {"item_id": f"P-{user}", "type": "points", "prize": "p300", "campaign": campaign,
               "rule": f"{campaign}-r", "value_cents": 300, "granted_ms": at, "points": 300}
        coupon = {"item_id": f"C-{user}", "type": "coupon", "prize": "c20", "campaign": campaign,
                  "rule": f"{campaign}-r", "value_cents": 2000, "granted_ms": at}
        # A gift of points and a coupon (as a gift pack grants them), charged to the budget.
        self.records.append({**base, "record_id": f"grant:{user}", "kind": "grant", "prize": "pack",
                             "prize_type": "gift_pack", "cost_cents": 2300, "items": [lot, coupon]})
        if n % 4 == 0:  # the points expired
            self.records.append({**base, "record_id": f"expiry:{user}", "kind": "expiry", "items": [lot],
                                 "prize_type": "points", "points_delta": -300, "at_ms": at + DAY_MS,
                                 "recorded_ms": at + DAY_MS})
        if n % 4 == 1:  # some spent on an order
            self.records.append({**base, "record_id": f"points_spend:{user}", "kind": "points_spend",
                                 "items": [lot], "points_delta": -120, "at_ms": at + DAY_MS,
                                 "recorded_ms": at + DAY_MS})
        if n % 3 == 1:  # the coupon redeemed
            self.records.append({**base, "record_id": f"redemption:{user}", "kind": "redemption",
                                 "items": [coupon], "prize": "c20", "prize_type": "coupon", "order_id": f"o-{user}",
                                 "order_cents": 15_000, "discount_cents": 2000})

    def records_for(self, ctx: Context) -> Iterator[tuple[str, dict]]:
        topics = ctx.settings.topics
        yield from ((touch_topic(ctx, e), e) for e in self.events)
        yield from ((topics.tier_changes, c) for c in self.changes)
        yield from ((topics.reward_grants, r) for r in self.records)

    # --- the answers -----------------------------------------------------------------------

    def outstanding_points(self) -> list[tuple[str, int]]:
        points: Counter[str] = Counter()
        for r in self.records:
            moved = r.get("points_delta") or sum(i.get("points") or 0 for i in r["items"]
                                                 if i["type"] == "points" and r["kind"] == "grant")
            points[r["user_id"]] += moved
        ranked = sorted(((u, p) for u, p in points.items() if p > 0), key=lambda up: (-up[1], up[0]))
        return ranked[:100]

    def segments(self) -> dict[str, int]:
        latest: dict[str, tuple[int, str]] = {}
        for c in self.changes:
            if c["dimension"] == "segment" and c["version"] > latest.get(c["user_id"], (0, ""))[0]:
                latest[c["user_id"]] = (c["version"], c["new"])
        return dict(Counter(new for _, new in latest.values()))

    def spend(self) -> dict[str, tuple[float, int, int, float, float]]:
        out: dict[str, list] = defaultdict(lambda: [0, 0, 0, 0, 0])
        for r in self.records:
            row = out[r["campaign"]]
            row[0] += r.get("cost_cents", 0)
            row[1] += r["kind"] == "grant"
            row[2] += r["kind"] == "redemption"
            row[3] += r.get("discount_cents", 0) if r["kind"] == "redemption" else 0
            row[4] += r.get("order_cents", 0) if r["kind"] == "redemption" else 0
        return {c: (v[0] / 100, v[1], v[2], v[3] / 100, v[4] / 100) for c, v in out.items()}

    def decayed(self) -> dict[tuple[str, str], int]:
        return dict(Counter((c["old"], c["new"]) for c in self.changes if c["reason"] == "time_decay"))

    def revenue_per_category_day(self, since: date) -> dict[tuple[date, str], float]:
        out: Counter[tuple[date, str]] = Counter()
        seen: set[str] = set()
        for e in self.events:
            if e["type"] != "purchase" or e["event_id"] in seen or event_day(e) < since:
                continue
            seen.add(e["event_id"])
            for item in e["items"]:
                out[(event_day(e), item["category"])] += round(item["price"] * 100) * item["qty"]
        return {k: v / 100 for k, v in out.items()}


@pytest.fixture(scope="module")
def demo() -> Demo:
    return Demo()


@pytest.fixture
def filled(tmp_path: Path, demo: Demo) -> Iterator[tuple[Context, Archive]]:
    ctx = archive_context(Settings.from_env(), tmp_path / "home")
    archive = Archive(ctx.settings, ctx.config.archive)
    archive_directly(ctx, archive, demo.records_for(ctx))
    # Half of it delivered a second time, as after a crash before the offsets were committed.
    archive_directly(ctx, archive, list(demo.records_for(ctx))[::2])
    yield ctx, archive
    drop_if_server(ctx, archive)
    archive.close()


def params_for(statement: str, start: date, end: date) -> dict[str, Any]:
    """Values for the documented placeholders: {from} and {to} span the data."""
    values: dict[str, Any] = {}
    for name, kind in PLACEHOLDER.findall(statement):
        day = {"from": start, "to": end}[name]
        values[name] = day if kind == "Date" else datetime(day.year, day.month, day.day, tzinfo=UTC)
    return values


def test_every_documented_query_runs_and_gives_the_right_answer(
    filled: tuple[Context, Archive], demo: Demo
) -> None:
    _ctx, archive = filled
    backend = archive.reader()
    days = sorted(event_day(e) for e in demo.events)
    start, end = days[0], days[-1] + timedelta(days=1)

    def rows(table: Table) -> list[dict[str, Any]]:
        return [dict(zip(table.columns, row, strict=True)) for row in table.rows]

    def funnel(found: list[dict]) -> None:
        want = aipl_truth(demo.events, start, end)[None]
        assert {k: found[0][k] for k in want} == want
        assert found[0]["a_to_i"] == pytest.approx(want["interest"] / want["awareness"])

    def points(found: list[dict]) -> None:
        assert [(r["user_id"], r["points"]) for r in found] == demo.outstanding_points()
        assert all(r["points"] > 0 for r in found)

    def segments(found: list[dict]) -> None:
        assert {r["segment"]: r["users"] for r in found} == demo.segments()

    def spend(found: list[dict]) -> None:
        got = {r["campaign"]: (r["spent"], r["grants"], r["redemptions"], r["discount"],
                               r["redeemed_orders"]) for r in found}
        assert got == demo.spend()

    def decayed(found: list[dict]) -> None:
        assert {(r["old"], r["new"]): r["users"] for r in found} == demo.decayed()

    def revenue(found: list[dict]) -> None:
        want = demo.revenue_per_category_day(demo.today - timedelta(days=30))
        assert {(r["day"], r["category"]): r["revenue"] for r in found} == pytest.approx(want)

    checks: dict[str, Callable[[list[dict]], None]] = {
        "AS awareness": funnel,
        "FROM points_ledger": points,
        "AS segment": segments,
        "AS redeemed_orders": spend,
        "reason = 'time_decay'": decayed,
        "ARRAY JOIN items": revenue,
    }
    statements = documented_queries()
    assert len(statements) >= 10
    checked = Counter[str]()
    for statement in statements:
        table = backend.select(read_only_statement(statement), params_for(statement, start, end))
        assert table.rows, f"no rows from the documented query:\n{statement}"
        for marker, check in checks.items():
            if marker in statement:
                check(rows(table))
                checked[marker] += 1
    assert checked == dict.fromkeys(checks, 1)
