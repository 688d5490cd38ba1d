"""Refunds in the archive (chDB, or the server in CLICKHOUSE_URL): each order's net amount
and full refunds, and refunds per customer and day, exact despite duplicate inserts."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from tests.fixtures.archive import archive_directly, event_day, touch_topic
from tests.pipeline.archive.test_archive import population, with_duplicates
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.config.context import Context


def test_net_orders_and_daily_refunds_equal_the_events(ctx: Context, archive: Archive) -> None:
    events = population(users=200, days=60, seed=15)
    refunds = [e for e in events if e["type"] == "refund"]
    assert refunds
    archive_directly(ctx, archive, ((touch_topic(ctx, e), e) for e in with_duplicates(events, 0.2, seed=15)))
    backend = archive.backend()

    amounts = {(e["user_id"], e["order_id"]): Decimal(str(e["amount"])) for e in events if e["type"] == "purchase"}
    returned: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    daily: dict[tuple[object, str], list] = defaultdict(lambda: [0, Decimal(0)])
    for e in refunds:
        returned[(e["user_id"], e["order_id"])] += Decimal(str(e["amount"]))
        daily[(event_day(e), e["user_id"])][0] += 1
        daily[(event_day(e), e["user_id"])][1] += Decimal(str(e["amount"]))

    rows = backend.query(
        "SELECT user_id, order_id, refunds, refunded_cents, net_cents, full_refund FROM order_refunds_v")
    assert {(u, o): (n, r, net, bool(full)) for u, o, n, r, net, full in rows} == {
        order: (sum(1 for e in refunds if (e["user_id"], e["order_id"]) == order), int(money * 100),
                int((amounts[order] - money) * 100), money == amounts[order])
        for order, money in returned.items()}
    got = backend.query("SELECT day, user_id, refunds, refunded_cents FROM user_refunds_daily_v")
    assert {(day, user): [n, cents] for day, user, n, cents in got} == {
        key: [n, int(money * 100)] for key, (n, money) in daily.items()}
