"""The uplift panel: campaign assignments archived from reward.grants (migration 007),
purchases after them net of their refunds, and the 95% intervals, against an independent computation over
the same known dataset (plain Python, the statistics module); the arithmetic alone
on hand-checked numbers."""

from __future__ import annotations

import asyncio
import csv
import io
import math
import random
import statistics
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.fixtures.archive import archive_context, archive_directly, drop_if_server, touch_topic
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.dashboard import uplift
from tierflow.pipeline.dashboard.server import build_app
from tierflow.pipeline.rewards import granting, holdout
from tierflow.pipeline.rewards.rules import GrantIntent

START = datetime(2026, 5, 1, tzinfo=UTC)
DAY_MS = 86_400_000
HOLDOUT = 30.0
Z = statistics.NormalDist().inv_cdf(0.975)


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def assignment(campaign: str, user: str, at_ms: int) -> dict[str, Any]:
    intent = GrantIntent("r", campaign, "p", user, f"event:{user}-t", at_ms,
                         holdout.arm(campaign, user, HOLDOUT) == "control")
    return msgspec.to_builtins(granting.assignment_record(intent, at_ms))


def purchase(user: str, n: int, at_ms: int, cents: int) -> dict[str, Any]:
    amount = cents / 100
    return {"event_id": f"{user}-p{n}", "type": "purchase", "user_id": user, "ts": iso(at_ms), "channel": "app",
            "order_id": f"{user}-o{n}", "amount": amount, "currency": "CNY",
            "items": [{"sku": "S1", "category": "snacks", "qty": 1, "price": amount}]}


def refund(order: dict[str, Any], n: int, cents: int) -> dict[str, Any]:
    return {"event_id": f"{order['order_id']}-r{n}", "type": "refund", "user_id": order["user_id"],
            "ts": order["ts"], "channel": "app", "order_id": order["order_id"], "amount": cents / 100,
            "currency": "CNY"}


def dataset() -> tuple[dict[tuple[str, str], int], list[dict[str, Any]]]:
    """Assignments (campaign, user) -> time, purchases before and after them, and refunds
    (in full, in part, in two parts); the control group buys less."""
    rng = random.Random(15)
    assigned: dict[tuple[str, str], int] = {}
    purchases: list[dict[str, Any]] = []
    for i in range(300):
        user = f"c{i:03d}"
        for campaign in ("spring", "autumn")[: 1 + i % 2]:
            assigned[(campaign, user)] = ms(START) + rng.randint(0, 20) * DAY_MS + rng.randint(0, DAY_MS)
        control = holdout.arm("spring", user, HOLDOUT) == "control"
        for n in range(rng.randint(0, 3 if control else 5)):
            purchases.append(purchase(user, n, ms(START) + rng.randint(-10, 40) * DAY_MS, rng.randint(500, 30000)))
            order, cents, chance = purchases[-1], round(purchases[-1]["amount"] * 100), rng.random()
            if chance < 0.1:
                purchases.append(refund(order, 0, cents))  # returned in full
            elif chance < 0.2:
                purchases += [refund(order, 0, cents // 3), refund(order, 1, cents // 4)]
    return assigned, purchases


def truth(assigned: dict[tuple[str, str], int], purchases: list[dict[str, Any]], campaign: str,
          days: int | None) -> dict[str, Any]:
    """Independently of the dashboard: per arm, each customer's orders and revenue after assignment."""
    orders = {p["order_id"]: p for p in purchases if p["type"] == "purchase"}  # each order once
    returned: dict[str, int] = {}
    for r in {r["event_id"]: r for r in purchases if r["type"] == "refund"}.values():
        returned[r["order_id"]] = returned.get(r["order_id"], 0) + round(r["amount"] * 100)

    def net(order: dict[str, Any]) -> int:
        return round(order["amount"] * 100) - returned.get(order["order_id"], 0)

    arms: dict[str, list[tuple[int, int]]] = {"treated": [], "control": []}
    for (cid, user), at in assigned.items():
        if cid != campaign:
            continue
        mine = [o for o in orders.values() if o["user_id"] == user
                and at <= ms(datetime.fromisoformat(o["ts"])) < (at + days * DAY_MS if days else math.inf)]
        bought = sum(1 for o in mine if net(o) > 0)  # refunded in full: no purchase
        arms[holdout.arm(campaign, user, HOLDOUT)].append((bought, sum(net(o) for o in mine)))
    out: dict[str, Any] = {}
    for arm, rows in arms.items():
        out[arm] = {"n": len(rows), "rate": sum(1 for k, _ in rows if k) / len(rows),
                    "revenue": [r for _, r in rows]}
    t, c = out["treated"], out["control"]
    rate = t["rate"] - c["rate"]
    rate_se = math.sqrt(t["rate"] * (1 - t["rate"]) / t["n"] + c["rate"] * (1 - c["rate"]) / c["n"])
    revenue = statistics.mean(t["revenue"]) - statistics.mean(c["revenue"])
    revenue_se = math.sqrt(statistics.variance(t["revenue"]) / t["n"] + statistics.variance(c["revenue"]) / c["n"])
    return {"arms": {a: (v["n"], v["rate"], statistics.mean(v["revenue"])) for a, v in out.items()},
            "rate": (rate, rate - Z * rate_se, rate + Z * rate_se),
            "revenue": (revenue, revenue - Z * revenue_se, revenue + Z * revenue_se)}


@pytest.fixture
def uplift_archive(tmp_path: Path) -> Iterator[tuple[Context, Archive, dict, list]]:
    ctx = archive_context(Settings.from_env(), tmp_path / "home")
    archive = Archive(ctx.settings, ctx.config.archive)
    assigned, purchases = dataset()
    grants = ctx.settings.topics.reward_grants
    records = [(grants, assignment(c, u, at)) for (c, u), at in assigned.items()]
    records += [(touch_topic(ctx, p), p) for p in purchases]
    archive_directly(ctx, archive, records)
    archive_directly(ctx, archive, records[::7])  # some delivered twice, in another batch
    yield ctx, archive, assigned, purchases
    drop_if_server(ctx, archive)
    archive.close()


def close(doc: dict[str, Any] | None, expected: tuple[float, float, float]) -> bool:
    assert doc is not None
    got = (doc["difference"], doc["low"], doc["high"])
    return all(math.isclose(g, e, rel_tol=1e-9, abs_tol=1e-9) for g, e in zip(got, expected, strict=True))


@pytest.mark.service
def test_uplift_matches_an_independent_computation(uplift_archive: tuple[Context, Archive, dict, list]) -> None:
    ctx, archive, assigned, purchases = uplift_archive
    for days in (None, 7):
        doc = uplift.report(archive.backend(), {"spring": HOLDOUT}, days)
        by_campaign = {c["campaign"]: c for c in doc["campaigns"]}
        assert set(by_campaign) == {"spring", "autumn"}  # configured, or with assignments archived
        for campaign, found in by_campaign.items():
            expected = truth(assigned, purchases, campaign, days)
            for arm, (n, rate, revenue) in expected["arms"].items():
                assert found[arm]["customers"] == n
                assert math.isclose(found[arm]["purchase_rate"], rate)
                assert math.isclose(found[arm]["revenue_per_customer_cents"], revenue)
            assert close(found["purchase_rate_uplift"], expected["rate"])
            assert close(found["revenue_per_customer_uplift_cents"], expected["revenue"])
        assert by_campaign["spring"]["holdout_percent"] == HOLDOUT
        assert by_campaign["autumn"]["holdout_percent"] is None
    # The dataset's control group buys less: the interval says so.
    spring = next(c for c in uplift.report(archive.backend(), {})["campaigns"] if c["campaign"] == "spring")
    assert spring["purchase_rate_uplift"]["low"] > 0

    async def over_http() -> None:
        async with TestClient(TestServer(build_app(archive, ctx.config, host="127.0.0.1", token=None))) as client:
            resp = await client.get("/api/uplift?days=7")
            assert resp.status == 200, await resp.text()
            served = await resp.json()
            assert served == uplift.report(archive.backend(), {}, 7)  # no holdout in the default config
            assert "Welch" in served["method"]
            assert (await client.get("/api/uplift?days=0")).status == 400
            csv_text = await (await client.get("/api/export/uplift.csv?days=7")).text()
            rows = list(csv.DictReader(io.StringIO(csv_text)))
            assert [(r["campaign"], r["arm"]) for r in rows] == [
                ("autumn", "treated"), ("autumn", "control"), ("spring", "treated"), ("spring", "control")]

    asyncio.run(over_http())


def test_the_interval_on_hand_checked_numbers() -> None:
    # 100 treated, 30 buy; 100 control, 20 buy: 0.10 ± 1.96 * sqrt(.21/100 + .16/100) = 0.10 ± 0.1192
    arms = {"treated": uplift.ArmSums(100, 30, 30_000, 30 * 1000.0 ** 2),
            "control": uplift.ArmSums(100, 20, 20_000, 20 * 1000.0 ** 2)}
    doc = uplift.compare(arms)
    rate = doc["purchase_rate_uplift"]
    assert math.isclose(rate["difference"], 0.1)
    assert math.isclose(rate["high"] - rate["difference"], Z * math.sqrt(0.0037))
    revenue = doc["revenue_per_customer_uplift_cents"]
    assert math.isclose(revenue["difference"], 100.0)
    treated_var = statistics.variance([1000] * 30 + [0] * 70)
    control_var = statistics.variance([1000] * 20 + [0] * 80)
    assert math.isclose(revenue["low"], 100 - Z * math.sqrt((treated_var + control_var) / 100))


def test_no_interval_without_two_customers_in_each_arm_and_no_uplift_without_both_arms() -> None:
    one = uplift.compare({"treated": uplift.ArmSums(5, 1, 100, 10_000.0), "control": uplift.ArmSums(1, 0, 0, 0.0)})
    assert one["purchase_rate_uplift"] == {"difference": 0.2, "low": None, "high": None}
    alone = uplift.compare({"treated": uplift.ArmSums(5, 1, 100, 10_000.0)})
    assert alone["purchase_rate_uplift"] is None and alone["control"]["purchase_rate"] is None
