"""The dashboard: token rules, the JSON API, and the page itself in Debian's
headless Chromium (the numbers it draws, no console output, a screenshot)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.fixtures.archive import (
    aipl_truth,
    archive_context,
    archive_directly,
    cli_env,
    counts,
    dashboard_process,
    domain_example_population,
    drop_if_server,
    tier_change,
    touch_topic,
)
from tests.fixtures.worker import free_port
from tests.pipeline.dashboard.browser import ready_page, run_chromium, screenshot
from tierflow.pipeline.archive.aipl import monday
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.dashboard.server import DashboardError, build_app, check_binding, is_loopback

MEMBERSHIP_SKU = "MEMBERSHIP-88VIP"
REFRESH_S = 5
TOKEN = "t0ken-for-tests"


def test_token_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    for host, token in (("127.0.0.1", None), ("::1", None), ("127.0.0.1", "x"), ("0.0.0.0", "x")):
        check_binding(host, token)
    for host in ("0.0.0.0", "192.168.1.5", "example.org"):
        with pytest.raises(DashboardError, match=f"refusing to serve the dashboard on {host} without"):
            check_binding(host, None)


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[Context, list[dict], date, list[dict]]]:
    """An archive holding the domain example population, tier changes and reward records."""
    ctx = archive_context(Settings.from_env(), tmp_path / "home")
    start = datetime.now(UTC).date() - timedelta(days=60)
    events = list(domain_example_population(start))
    # A loyal customer also buys the paid membership on a marketplace: no stage count changes,
    # the membership is no product category, and the public domain has one customer.
    events.append({"event_id": "x00000-m", "type": "purchase", "user_id": "x00000", "channel": "marketplace",
                   "ts": f"{start}T14:00:00.000Z", "order_id": "x00000-m", "amount": 888.0,
                   "currency": "CNY", "items": [{"sku": MEMBERSHIP_SKU, "category": "membership",
                                                 "qty": 1, "price": 888.0}]})
    topics = ctx.settings.topics
    extra: list[tuple[str, dict]] = []
    segments = ("important_value", "general_develop", "important_win_back")
    for i in range(300):
        user = f"x{i:05d}"
        day = datetime(start.year, start.month, start.day, 9, tzinfo=UTC) + timedelta(days=i % 28)
        day_ms = int(day.timestamp() * 1000)
        extra.append((topics.tier_changes, tier_change(
            user, "segment", None, segments[i % 3], "event", 1, day_ms, seq=1)))
        if i % 3 == 0:
            extra.append((topics.tier_changes, tier_change(
                user, "segment", segments[0], segments[2], "time_decay", 2,
                int((day + timedelta(days=20)).timestamp() * 1000), seq=3)))
        extra.append((topics.tier_changes, tier_change(
            user, "membership", None, "super" if i % 5 == 0 else "ordinary", "event", 1, day_ms, seq=2)))
        if i % 4 == 0:
            extra.append((topics.reward_grants, {
                "record_id": f"g{i}", "kind": "grant", "user_id": user,
                "campaign": "upgrade_pack", "prize_type": "gift_pack", "cost_cents": 1500,
                "at_ms": day_ms, "recorded_ms": day_ms, "items": []}))
    archive = Archive(ctx.settings, ctx.config.archive)
    archive_directly(ctx, archive, [(touch_topic(ctx, e), e) for e in events] + extra)
    archive.close()  # embedded chDB: whoever serves the page opens it next
    yield ctx, events, start, [r for t, r in extra if t == topics.tier_changes]
    archive = Archive(ctx.settings, ctx.config.archive)
    drop_if_server(ctx, archive)
    archive.close()


@pytest.mark.service
def test_api_answers_with_the_token_in_a_header_or_a_login_session(
    seeded: tuple[Context, list[dict], date, list[dict]],
) -> None:
    ctx, events, start, changes = seeded
    archive = Archive(ctx.settings, ctx.config.archive)
    end = start + timedelta(days=27)

    async def scenario() -> None:
        public = build_app(archive, ctx.config, host="10.1.2.3", token=TOKEN,
                           status=lambda: {"state": "running"})
        async with TestClient(TestServer(public)) as client:
            for path in ("/api/aipl", "/dashboard/", "/api/archive/status", "/", "/api/sales",
                         "/api/export/sales.csv", "/api/dashboard/config"):
                assert (await client.get(path, allow_redirects=False)).status == 401
            bad = await client.get("/api/aipl", headers={"Authorization": "Bearer nope"})
            assert bad.status == 401
            ok = await client.get("/api/aipl", headers={"Authorization": f"Bearer {TOKEN}"})
            assert ok.status == 200
            assert counts(await ok.json()) == {"awareness": 50_000, "interest": 6_000,
                                               "purchase": 1_860, "loyalty": 837}
            # Never in a URL: it would end up in access logs and browser history.
            assert (await client.get(f"/api/aipl?token={TOKEN}")).status == 401
            browser = {"Accept": "text/html"}
            sent_away = await client.get(f"/dashboard/?token={TOKEN}", headers=browser,
                                         allow_redirects=False)
            assert (sent_away.status, sent_away.headers["Location"]) == (303, "/dashboard/login")
            assert (await client.get("/dashboard/static/dashboard.js")).status == 200  # no data
            assert (await client.get("/dashboard/static/secrets.txt")).status == 404
            for bent in ("/dashboard/static/..%2F..%2Fapi%2Faipl", "/dashboard/static/../../api/aipl"):
                assert (await client.get(bent)).status in (401, 404), bent  # never the data
            assert (await client.get("/nowhere")).status == 401  # not even what exists
            await login_session(client)

            auth = {"Authorization": f"Bearer {TOKEN}"}
            trend = await (await client.get(f"/api/aipl/trend?from={start}&to={end}",
                                            headers=auth)).json()
            weeks = aipl_truth(events, start, end, "week")
            assert {date.fromisoformat(w["week"]): counts(w) for w in trend["weeks"]} == weeks
            by = await (await client.get(f"/api/aipl?by=channel&from={start}", headers=auth)).json()
            assert {k: counts(v) for k, v in by.items()} == aipl_truth(events, start, end, "channel")
            tiers = await (await client.get("/api/tiers", headers=auth)).json()
            assert tiers["dimensions"]["segment"] == {"important_win_back": 200,
                                                      "general_develop": 100}
            assert tiers["dimensions"]["membership"] == {"ordinary": 240, "super": 60}
            since, until = start + timedelta(days=19), end + timedelta(days=30)
            moves = await (await client.get(
                f"/api/segments/migration?from={since}&to={until}", headers=auth)).json()
            want = migration_truth(changes, since, until)
            assert {(f["from"], f["to"]): f["users"] for f in moves["flows"]} == want
            assert len(want) >= 2
            rewards = await (await client.get("/api/rewards", headers=auth)).json()
            pack = next(c for c in rewards["campaigns"] if c["campaign"] == "upgrade_pack")
            assert (pack["grants"], pack["spent_cents"]) == (75, 75 * 1500)
            exported = await client.get("/api/export/funnel.csv", headers=auth)
            assert exported.status == 200 and exported.content_type == "text/csv"
            assert (await exported.text()).splitlines()[1].startswith("50000,6000,1860,837,0.12,0.31,0.45")
            status = await (await client.get("/api/archive/status", headers=auth)).json()
            assert status["writer"] == {"state": "running"}
            assert status["events"] == len(events)
            for query in ("from=yesterday", "by=planet", "from=2026-02-02&to=2026-01-01"):
                assert (await client.get(f"/api/aipl?{query}", headers=auth)).status == 400

        with pytest.raises(DashboardError, match=r"refusing to serve the dashboard on 0\.0\.0\.0"):
            build_app(archive, ctx.config, host="0.0.0.0", token=None)

        local = build_app(archive, ctx.config, host="127.0.0.1", token=None)
        async with TestClient(TestServer(local)) as client:
            assert (await client.get("/api/aipl")).status == 200

    try:
        asyncio.run(scenario())
    finally:
        archive.close()


async def login_session(client: TestClient) -> None:
    """The login form sets an HttpOnly, SameSite=Strict session cookie that opens the
    page and the API; logging out ends it."""
    form = await client.get("/dashboard/login")
    assert form.status == 200 and 'method="post"' in await form.text()
    wrong = await client.post("/dashboard/login", data={"token": "nope"}, allow_redirects=False)
    assert wrong.status == 401 and "not valid" in await wrong.text()
    assert not client.session.cookie_jar.filter_cookies(client.make_url("/"))
    right = await client.post("/dashboard/login", data={"token": TOKEN}, allow_redirects=False)
    assert (right.status, right.headers["Location"]) == (303, "/dashboard/")
    cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    assert (await client.get("/dashboard/")).status == 200
    assert (await client.get("/api/tiers")).status == 200
    await client.post("/dashboard/logout", allow_redirects=False)
    assert (await client.get("/api/tiers")).status == 401


def day(change: dict) -> date:
    return datetime.fromisoformat(change["event_time"]).date()


def distribution_truth(changes: list[dict], dimension: str, end: date) -> dict[str, int]:
    latest: dict[str, dict] = {}
    for c in sorted(changes, key=lambda c: c["version"]):
        if c["dimension"] == dimension and day(c) <= end:
            latest[c["user_id"]] = c
    out: dict[str, int] = {}
    for c in latest.values():
        out[c["new"]] = out.get(c["new"], 0) + 1
    return out


def migration_truth(changes: list[dict], start: date, end: date) -> dict:
    """(value before the period, value at its end) -> users, for users who changed in it."""
    users: dict[str, list[dict]] = {}
    for c in changes:
        if c["dimension"] == "segment":
            users.setdefault(c["user_id"], []).append(c)
    flows: dict[tuple, int] = {}
    for history in users.values():
        history.sort(key=lambda c: c["version"])
        before = [c for c in history if day(c) < start]
        upto = [c for c in history if day(c) <= end]
        if not any(start <= day(c) <= end for c in history):
            continue
        move = (before[-1]["new"] if before else None, upto[-1]["new"])
        if move[0] != move[1]:
            flows[move] = flows.get(move, 0) + 1
    return flows


@pytest.mark.service
def test_dashboard_page_renders_the_expected_numbers(
    seeded: tuple[Context, list[dict], date, list[dict]], tmp_path: Path
) -> None:
    ctx, events, start, changes = seeded
    end = start + timedelta(days=27)
    port = free_port()
    # On loopback without a token, as on a laptop (the token rules are tested above).
    env = cli_env(ctx, tmp_path, TIERFLOW_WEB_PORT=str(port))
    env.pop("TIERFLOW_DASHBOARD_TOKEN", None)
    config = Path(env.get("TIERFLOW_CONFIG") or tmp_path / "dashboard.toml")
    config.write_text((config.read_text() if config.exists() else "") + f"[dashboard]\nrefresh_s = {REFRESH_S}\n")
    env["TIERFLOW_CONFIG"] = str(config)
    with dashboard_process(env, port) as base:
        url = f"{base}/dashboard/?from={start}&to={end}"
        dom = ready_page(run_chromium(tmp_path, url, "--dump-dom"))
        screenshot(tmp_path, url, "dashboard.png", (1440, 2300))

    # The funnel: the domain brief's example, exactly.
    funnel = dom.rendered("funnel")
    assert funnel == {"awareness": 50_000, "interest": 6_000, "purchase": 1_860, "loyalty": 837,
                      "rates": {"a_to_i": 0.12, "i_to_p": 0.31, "p_to_l": 0.45}}
    drawn = dom.joined("funnel")
    for label in ("50,000", "6,000", "1,860", "837", "A→I 12.00%", "I→P 31.00%", "P→L 45.00%"):
        assert label in drawn
    kpis = dom.joined("kpis")
    assert re.search(r"Aware\s+50,000", kpis) and re.search(r"P→L\s+45\.00%", kpis)

    # The weekly trend: one point per week and rate, the rates of the weekly truth.
    truth = aipl_truth(events, start, end, "week")
    trend = dom.rendered("trend")
    weeks = sorted(truth)
    assert trend["weeks"] == len(weeks) and trend["first"] == weeks[0].isoformat()
    assert monday(start) == weeks[0]
    want_rates = [
        {"a_to_i": round(w["interest"] / w["awareness"], 6),
         "i_to_p": round(w["purchase"] / w["interest"], 6),
         "p_to_l": round(w["loyalty"] / w["purchase"], 6)}
        for w in (truth[k] for k in weeks)
    ]
    assert trend["rates"] == want_rates
    assert trend["points"] == dom.points == 3 * len(weeks)

    # The other charts drew what the archive holds.
    assert dom.rendered("by-channel")["groups"] == 5  # app, mini_program, store, chat, marketplace
    assert dom.rendered("by-category")["names"] == ["snacks"]  # not the membership

    # Sales: every order once, nothing in the 28 days before, the period long over.
    orders = {e["order_id"]: e["amount"] for e in events if e["type"] == "purchase"}
    revenue = round(sum(orders.values()) * 100)
    assert dom.rendered("sales") == {
        "orders": len(orders), "revenue_cents": revenue, "aov_cents": round(revenue / len(orders), 2),
        "change": {"orders": None, "revenue_cents": None, "aov_cents": None}, "partial": False,
        "previous": {"orders": 0, "revenue_cents": 0}}
    sales = dom.joined("sales")
    assert f"{revenue / 100:,.2f}" in sales and f"{len(orders):,}" in sales and "partial" not in sales
    assert dom.rendered("domains")["names"] == ["private", "public"]
    assert re.search(r"Public domain\s+888\.00\s+\(1 order\)", dom.joined("domain-sales"))
    split = dom.rendered("tier-domains")
    assert split["dimension"] == "segment"
    assert sum(v["both"] for v in split["values"].values()) == 1  # x00000: app and marketplace
    assert sum(sum(v.values()) for v in split["values"].values()) == 300
    assert dom.rendered("rewards")["from"] == start.isoformat()  # the panel follows the period
    # Live: the panels were fetched again (every REFRESH_S of the page's virtual time).
    assert int(dom.body["data-refreshes"] or 0) >= 2, dom.body
    assert dom.by_id["live"]["data-state"] == "on"
    assert f'href="/api/export/sales.csv?from={start}&amp;to={end}"' in dom.html
    values = distribution_truth(changes, "segment", end)
    assert len(values) == 3
    assert dom.rendered("tiers") == {"dimension": "segment", "total": 300, "values": values}
    assert dom.rendered("migration")["flows"] >= 1
    assert dom.rendered("rewards")["campaigns"] >= 1
