"""The dashboard's sales, product, domain and export endpoints against a chDB (or
ClickHouse) archive holding known events, checked against a batch computation over
the same events that shares no code with the dashboard; and the pure helpers."""

from __future__ import annotations

import asyncio
import csv
import io
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import msgspec
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.fixtures.archive import (
    aipl_truth,
    archive_context,
    archive_directly,
    cli_env,
    counts,
    dashboard_process,
    drop_if_server,
    event_day,
    tier_change,
    touch_topic,
)
from tests.fixtures.worker import free_port
from tests.pipeline.dashboard.browser import DevTools, devtools, ready_page, run_chromium, screenshot
from tierflow.pipeline.archive.aipl import Period
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.dashboard import export, queries
from tierflow.pipeline.dashboard.server import build_app

MEMBERSHIP = "MEMBERSHIP-88VIP"
SERVICE = "SVC-INSTALL"
PUBLIC = ("marketplace", "tmall")
PRIVATE = ("app", "mini_program", "chat", "store")
OTHER = ("kiosk",)
CHANNELS = PUBLIC + PRIVATE + OTHER
PRODUCTS = (("SN001", "snacks"), ("DF002", "dried_fruit"), ("NU003", "nuts"))
NOT_PRODUCTS = ((MEMBERSHIP, "membership"), (SERVICE, "service"))


def test_previous_period_and_partial_flags() -> None:
    period = Period(date(2026, 3, 2), date(2026, 3, 15))  # two ISO weeks, Monday to Sunday
    assert queries.previous(period) == Period(date(2026, 2, 16), date(2026, 3, 1))
    assert not queries.is_partial(period, today=date(2026, 3, 16))
    assert queries.is_partial(period, today=date(2026, 3, 15))  # today is not over yet
    assert [queries.partial_week(date(2026, 3, d), period, date(2026, 3, 12)) for d in (2, 9)] == [
        False, True]
    clipped = Period(date(2026, 3, 4), date(2026, 3, 15))
    assert queries.partial_week(date(2026, 3, 2), clipped, date(2027, 1, 1))
    assert queries.ratio_change(150, 100) == 0.5 and queries.ratio_change(5, 0) is None
    assert queries.reach(True, True) == "both" and queries.reach(False, False) == "none"


def test_channel_map_refuses_a_channel_in_both_domains(tmp_path: Path) -> None:
    from tierflow.pipeline.config.domain import load_config
    from tierflow.pipeline.errors import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text('[dashboard]\npublic_channels = ["app"]\nprivate_channels = ["app"]\n')
    with pytest.raises(ConfigError, match="both public and private: app"):
        load_config(bad)


def shop(start: date, today: date) -> list[dict]:
    """Browses, carts and purchases over 6 weeks up to today in every kind of channel,
    with lines of products, the membership and a service; some events twice."""
    rng = random.Random(14)
    events: list[dict] = []
    days = (today - start).days
    for i in range(400):
        user = f"u{i:04d}"
        channel = CHANNELS[i % len(CHANNELS)]
        for n in range(rng.randint(1, 6)):
            when = datetime(start.year, start.month, start.day, 8, tzinfo=UTC) + timedelta(
                days=rng.randint(0, days), minutes=rng.randint(0, 600))
            base = {"event_id": f"{user}-{n}", "user_id": user, "ts": when.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                    # most users stay in one channel; some also use another domain's
                    "channel": channel if rng.random() < 0.7 else rng.choice(CHANNELS)}
            sku, category = rng.choice(PRODUCTS + NOT_PRODUCTS)
            kind = rng.choice(("browse", "cart", "purchase", "purchase"))
            if kind == "browse":
                events.append({**base, "type": "browse", "page": "item", "sku": sku, "category": category})
            elif kind == "cart":
                events.append({**base, "type": "cart", "action": "add", "sku": sku, "category": category,
                               "qty": 1, "price": 19.9})
            else:
                lines = [{"sku": sku, "category": category, "qty": 1, "price": 19.9}]
                if rng.random() < 0.4:
                    other, cat = rng.choice(PRODUCTS)
                    lines.append({"sku": other, "category": cat, "qty": 2, "price": 5.25})
                amount = round(sum(line["qty"] * line["price"] for line in lines) - rng.choice((0, 3)), 2)
                events.append({**base, "type": "purchase", "order_id": f"{user}-o{n}", "amount": amount,
                               "currency": "CNY", "items": lines})
                if rng.random() < 0.2:  # returned in full or in part, an hour later
                    back = amount if rng.random() < 0.5 else round(amount / 2, 2)
                    later = (when + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
                    events.append({**base, "event_id": f"{user}-{n}-r", "ts": later, "type": "refund",
                                   "order_id": f"{user}-o{n}", "amount": back, "currency": "CNY"})
            if rng.random() < 0.1:
                events.append(dict(events[-1]))  # delivered twice
    return events


def sales_truth(events: list[dict], start: date, end: date, domain_of: dict[str, str]) -> dict:
    """Orders placed in [start, end], each once, net of their refunds whenever those came;
    an order refunded in full is no order."""
    orders: dict[str, dict] = {}
    returned: dict[str, int] = defaultdict(int)
    refunds = {e["event_id"]: e for e in events if e["type"] == "refund"}
    for e in refunds.values():
        returned[e["order_id"]] += round(e["amount"] * 100)
    for e in events:
        if e["type"] == "purchase" and start <= event_day(e) <= end:
            orders[e["order_id"]] = e
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for order_id, e in orders.items():
        cents = round(e["amount"] * 100)
        net = cents - min(returned[order_id], cents)
        for key in ("total", domain_of.get(e["channel"], "other")):
            out[key][0] += net > 0
            out[key][1] += net
    return out


def product_truth(events: list[dict], start: date, end: date, skip: set[str]) -> dict:
    """The category funnel of events without the non-product SKUs' lines and events."""
    kept = []
    for e in events:
        if e["type"] == "purchase":
            lines = [line for line in e["items"] if line["sku"] not in skip]
            kept.append({**e, "items": lines})
        elif e.get("sku") not in skip:
            kept.append(e)
    return {k: v for k, v in aipl_truth(kept, start, end, "category").items() if v["awareness"]}


@pytest.fixture
def shop_archive(tmp_path: Path) -> Iterator[tuple[Context, list[dict], date]]:
    base = archive_context(Settings.from_env(), tmp_path / "home")
    dashboard = msgspec.structs.replace(
        base.config.dashboard, non_product_skus=[SERVICE], public_channels=list(PUBLIC),
        private_channels=list(PRIVATE))
    ctx = Context(base.settings, msgspec.structs.replace(base.config, dashboard=dashboard))
    today = datetime.now(UTC).date()
    events = shop(today - timedelta(days=41), today)
    first = {e["user_id"]: e["ts"] for e in reversed(events)}  # each user's first event
    changes = [tier_change(user, "segment", None, tier_value(user), "event", 1, ts)
               for user, ts in first.items()]
    archive = Archive(ctx.settings, ctx.config.archive)
    records = [(touch_topic(ctx, e), e) for e in events]
    archive_directly(ctx, archive, records + [(ctx.settings.topics.tier_changes, c) for c in changes])
    archive_directly(ctx, archive, records[:200])  # a replay
    archive.close()  # embedded chDB: whoever serves the page opens it next
    yield ctx, events, today
    archive = Archive(ctx.settings, ctx.config.archive)
    drop_if_server(ctx, archive)
    archive.close()


@pytest.mark.service
def test_sales_products_domains_and_exports_match_a_batch_computation(
    shop_archive: tuple[Context, list[dict], date],
) -> None:
    ctx, events, today = shop_archive
    archive = Archive(ctx.settings, ctx.config.archive)
    start, end = today - timedelta(days=13), today
    before = (today - timedelta(days=27), today - timedelta(days=14))
    domain_of = {c: "public" for c in PUBLIC} | {c: "private" for c in PRIVATE}

    async def scenario() -> None:
        async with TestClient(TestServer(build_app(archive, ctx.config, host="127.0.0.1",
                                                   token=None))) as client:
            async def get(path: str) -> dict:
                resp = await client.get(path)
                assert resp.status == 200, await resp.text()
                return await resp.json()

            sales = await get(f"/api/sales?from={start}&to={end}")
            now, then = sales_truth(events, start, end, domain_of), sales_truth(events, *before, domain_of)
            orders, revenue = now["total"]
            assert (sales["orders"], sales["revenue_cents"]) == (orders, revenue) and orders > 50
            assert sales["aov_cents"] == round(revenue / orders, 2)
            old_orders, old_revenue = then["total"]
            assert sales["previous"] == {"from": str(before[0]), "to": str(before[1]), "orders": old_orders,
                                         "revenue_cents": old_revenue,
                                         "aov_cents": round(old_revenue / old_orders, 2)}
            assert sales["change"] == {
                "orders": round(orders / old_orders - 1, 6),
                "revenue_cents": round(revenue / old_revenue - 1, 6),
                "aov_cents": round(round(revenue / orders, 2) / round(old_revenue / old_orders, 2) - 1, 6)}
            assert sales["partial"] is True  # today is in it
            assert {d: (s["orders"], s["revenue_cents"]) for d, s in sales["domains"].items()} == {
                d: tuple(v) for d, v in now.items() if d != "total"}
            assert set(sales["domains"]) == {"public", "private", "other"}
            assert sum(w["orders"] for w in sales["weeks"]) == orders
            assert sales["weeks"][-1]["partial"] is True
            finished = await get(f"/api/sales?from={before[0]}&to={before[1]}")
            assert finished["partial"] is False and finished["orders"] == old_orders

            # Product categories: no membership, no configured service SKU; the rest exact.
            products = await get(f"/api/products?from={start}&to={end}")
            truth = product_truth(events, start, end, {MEMBERSHIP, SERVICE})
            assert {k: counts(v) for k, v in products.items()} == truth
            assert set(truth) == {"snacks", "dried_fruit", "nuts"}
            everything = await get(f"/api/aipl?by=category&from={start}&to={end}")
            assert {"membership", "service"} <= set(everything)  # the archive's own view keeps them

            # Public vs private: the channel funnels, grouped by the map.
            domains = await get(f"/api/domains?from={start}&to={end}")
            grouped = [{**e, "channel": domain_of.get(e["channel"], "other")} for e in events]
            assert {k: counts(v) for k, v in domains.items()} == aipl_truth(grouped, start, end, "channel")

            split = await get(f"/api/tiers/domains?to={end}&dimension=segment")
            assert split["values"] == tier_split_truth(events, domain_of, end)

            # The rewards panel follows the period it is given.
            rewards = await get(f"/api/rewards?from={start}")
            assert (rewards["from"], rewards["to"]) == (str(start), str(end))

            # CSV: the same numbers as the JSON, behind the same routes.
            resp = await client.get(f"/api/export/sales.csv?from={start}&to={end}")
            assert resp.status == 200 and resp.content_type == "text/csv"
            assert f'filename="tierflow-sales-{start}-{end}.csv"' in resp.headers["Content-Disposition"]
            rows = list(csv.DictReader(io.StringIO(await resp.text())))
            assert rows[0] == {"scope": "period", "from": str(start), "to": str(end), "orders": str(orders),
                               "revenue_cents": str(revenue), "aov_cents": str(round(revenue / orders, 2)),
                               "partial": "True"}
            categories = list(csv.DictReader(io.StringIO(
                await (await client.get(f"/api/export/categories.csv?from={start}&to={end}")).text())))
            assert {r["group"]: int(r["purchase"]) for r in categories} == {
                k: v["purchase"] for k, v in truth.items()}
            for panel in ("funnel", "channels", "domains", "trend", "tiers", "tier-domains", "migration",
                          "rewards"):
                resp = await client.get(f"/api/export/{panel}.csv?from={start}&to={end}")
                assert resp.status == 200 and len((await resp.text()).splitlines()) >= 2, panel
            assert (await client.get("/api/export/secrets.csv")).status == 404

    try:
        asyncio.run(scenario())
    finally:
        archive.close()


def tier_value(user: str) -> str:
    return ("gold", "silver")[int(user[1:]) % 2]


def tier_split_truth(events: list[dict], domain_of: dict[str, str], end: date) -> dict:
    """Users per segment, by the domains of the channels they were seen in up to `end`."""
    seen: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if event_day(e) <= end:
            seen[e["user_id"]].add(domain_of.get(e["channel"], "other"))
    out: dict[str, dict[str, int]] = {}
    for user, used in seen.items():
        where = ("both" if {"public", "private"} <= used else "public" if "public" in used
                 else "private" if "private" in used else "none")
        split = out.setdefault(tier_value(user), {"public": 0, "private": 0, "both": 0, "none": 0})
        split[where] += 1
    return out


def page_env(ctx: Context, tmp_path: Path, port: int, **dashboard: object) -> dict[str, str]:
    """Environment for `tierflow dashboard` on loopback, without a token, over this test's
    archive with its [dashboard] section (and `dashboard` on top)."""
    env = cli_env(ctx, tmp_path, TIERFLOW_WEB_PORT=str(port))
    env.pop("TIERFLOW_DASHBOARD_TOKEN", None)
    config = Path(env.get("TIERFLOW_CONFIG") or tmp_path / "dashboard.toml")
    shown = msgspec.structs.asdict(ctx.config.dashboard) | dashboard
    section = "".join(f"{key} = {orjson.dumps(value).decode()}\n" for key, value in shown.items())
    config.write_text((config.read_text() if config.exists() else "") + "[dashboard]\n" + section)
    env["TIERFLOW_CONFIG"] = str(config)
    return env


@pytest.mark.service
def test_page_flags_the_unfinished_period_and_compares_with_the_one_before(
    shop_archive: tuple[Context, list[dict], date], tmp_path: Path,
) -> None:
    """Two weeks up to today in headless Chromium: the sales cards, their changes and the
    partial flag, the product categories and the domain split are the batch truth's."""
    ctx, events, today = shop_archive
    start, before = today - timedelta(days=13), (today - timedelta(days=27), today - timedelta(days=14))
    domain_of = {c: "public" for c in PUBLIC} | {c: "private" for c in PRIVATE}
    port = free_port()
    with dashboard_process(page_env(ctx, tmp_path, port), port) as base:
        url = f"{base}/dashboard/?from={start}&to={today}"
        dom = ready_page(run_chromium(tmp_path, url, "--dump-dom"))
        screenshot(tmp_path, url, "dashboard-live.png", (1440, 2300))

    now, then = sales_truth(events, start, today, domain_of), sales_truth(events, *before, domain_of)
    (orders, revenue), (old_orders, old_revenue) = now["total"], then["total"]
    sales = dom.rendered("sales")
    assert (sales["orders"], sales["revenue_cents"], sales["partial"]) == (orders, revenue, True)
    assert sales["previous"] == {"orders": old_orders, "revenue_cents": old_revenue}
    change = round((revenue - old_revenue) / old_revenue * 100, 1)
    drawn = dom.joined("sales")
    assert f"{revenue / 100:,.2f}" in drawn and f"{change:+.1f}%" in drawn and "partial" in drawn
    assert f"vs {before[0]} to {before[1]}" in drawn
    assert dom.rendered("trend")["partial"][-1] == str(today - timedelta(days=today.weekday()))
    assert sorted(dom.rendered("by-category")["names"]) == ["dried_fruit", "nuts", "snacks"]
    assert sorted(dom.rendered("domains")["names"]) == ["other", "private", "public"]
    assert dom.rendered("tier-domains")["values"] == tier_split_truth(events, domain_of, today)


HIDE = """Object.defineProperty(document, "hidden", {value: %s, configurable: true});
Object.defineProperty(document, "visibilityState", {value: "%s", configurable: true});
document.dispatchEvent(new Event("visibilitychange"));"""


@pytest.mark.service
def test_page_refreshes_while_shown_pauses_while_hidden_and_never_reloads(
    shop_archive: tuple[Context, list[dict], date], tmp_path: Path,
) -> None:
    """In real time over DevTools: the page re-fetches every refresh_s while shown, not at all
    while hidden (the browser's visibilitychange, as when the tab is switched away), at once
    when shown again; picking another period re-fetches without reloading the page."""
    ctx, events, today = shop_archive
    start = today - timedelta(days=13)
    port = free_port()

    async def refreshes(tools: DevTools) -> int:
        return int(cast(int, await tools.value("Number(document.body.dataset.refreshes || -1)")))

    async def at_least(tools: DevTools, least: int) -> bool:
        return await refreshes(tools) >= least

    async def until(check: Callable[[], Awaitable[object]], timeout: float = 60) -> None:
        for _ in range(int(timeout * 10)):
            if await check():
                return
            await asyncio.sleep(0.1)
        raise AssertionError("timed out")

    async def scenario(base: str) -> None:
        async with devtools(tmp_path, free_port()) as tools:
            await tools.call("Page.navigate", url=f"{base}/dashboard/?from={start}&to={today}")
            await until(lambda: tools.value("document.body?.dataset.state === 'ready'"))
            await tools.value("window.sameDocument = true")
            await until(lambda: at_least(tools, 2))
            assert await tools.value("document.getElementById('live').dataset.state") == "on"

            await tools.value(HIDE % ("true", "hidden"))
            await asyncio.sleep(1.5)  # a pass already under way finishes
            paused = await refreshes(tools)
            await asyncio.sleep(3.5)  # three and a half refresh intervals
            assert await refreshes(tools) == paused
            assert await tools.value("document.getElementById('live').dataset.state") == "paused"

            await tools.value(HIDE % ("false", "visible"))
            await until(lambda: at_least(tools, paused + 1), timeout=5)  # not a second later
            assert await tools.value("document.getElementById('live').dataset.state") == "on"

            # "4 weeks": the URL and every panel follow, the page is the same document.
            await tools.value("document.querySelector('button[data-range=\"28\"]').click()")
            first = (today - timedelta(days=27)).isoformat()
            await until(lambda: tools.value(
                f"JSON.parse(document.getElementById('rewards').dataset.rendered).from === '{first}'"))
            assert await tools.value("location.search") == f"?from={first}&to={today}"
            assert await tools.value("window.sameDocument") is True
            sales = await tools.value("JSON.parse(document.getElementById('sales').dataset.rendered)")
            assert sales["orders"] == sales_truth(events, today - timedelta(days=27), today, {})["total"][0]
            assert await tools.value("document.body.dataset.errors || null") is None
            assert tools.logged == []  # no console output, no exceptions, no failed loads

    with dashboard_process(page_env(ctx, tmp_path, port, refresh_s=1), port) as base:
        asyncio.run(scenario(base))



def test_csv_rows_of_an_empty_archive_and_of_unknown_rates() -> None:
    empty = queries.sales(cast(Any, None), None, queries.Domains([], [], "other"), date(2026, 3, 1))
    assert export.to_csv(export.sales_rows(empty)) == "scope,from,to,orders,revenue_cents,aov_cents,partial\n"
    funnel = {"awareness": 3, "interest": 0, "purchase": 0, "loyalty": 0,
              "rates": {"a_to_i": 0.0, "i_to_p": None, "p_to_l": None}}
    assert export.to_csv(export.group_rows({"a, b": funnel})).splitlines()[1] == '"a, b",3,0,0,0,0.0,,'
