"""Points an order earned are taken back when it is refunded, in proportion to the money
returned, on real Redis: once per refund whatever is replayed, from the order's own lot
first, never below zero (points already spent stay spent), and also when the refund
arrived before its order."""

from __future__ import annotations

import msgspec
import pytest

from tests.pipeline.rewards.test_ledger import NOW, buy, engine_for, small_config
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.ingest.validate import parse_ts
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.engine import RewardEngine
from tierflow.pipeline.rewards.restore import LedgerFold, write
from tierflow.pipeline.rewards.wallet import lots
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.state.summary import encode
from tierflow.schemas.events import Event, Purchase, Refund
from tierflow.schemas.reward_grants import RewardRecord


class Shop:
    """Events through the state store, then the reward engine, as the worker runs them."""

    def __init__(self, url: str) -> None:
        doc = small_config(hundred={"type": "points", "points": 100})
        self.engine: RewardEngine = engine_for(url, msgspec.convert(doc, RewardsConfig))
        self.state = StateStore(connect(url), load_config().state.retention_days)
        self.offset = 0

    def send(self, *events: Event) -> list[RewardRecord]:
        for event in events:
            self.state.apply({(event.user_id, "touch.purchase:0"): [encode(event, parse_ts(event.ts), self.offset)]})
            self.offset += 1
        return self.engine.on_events([(e, parse_ts(e.ts)) for e in events], NOW)

    def balance(self, user: str) -> int:
        return sum(left for _, left in lots(self.engine.ledger.read(user)))


def refund(order: Purchase, amount: float, n: int = 0) -> Refund:
    return Refund(event_id=f"{order.event_id}-r{n}", user_id=order.user_id, ts=NOW, channel="app",
                  order_id=order.order_id, amount=amount, currency="CNY")


@pytest.fixture
def shop(redis_url: str) -> Shop:
    return Shop(redis_url)


def test_a_partial_refund_takes_back_its_share_once(shop: Shop) -> None:
    order = buy("u1", amount=150.0)
    shop.send(order)
    assert shop.balance("u1") == 100
    [record] = shop.send(refund(order, 60.0))  # 40% of the money
    assert (record.kind, record.points_delta, record.order_id, record.reason) == (
        "points_adjust", -40, "u1-o0", "refund")
    assert shop.balance("u1") == 60
    assert shop.engine.on_events([(refund(order, 60.0), NOW)], NOW) == []  # a replay takes nothing more
    assert shop.balance("u1") == 60


def test_a_full_refund_takes_what_is_left_never_below_zero(shop: Shop) -> None:
    order = buy("u1", amount=150.0)
    shop.send(order)
    assert shop.engine.adjust_points("u1", 100, "welcome", NOW, "goodwill") is not None
    assert shop.balance("u1") == 200
    shop.send(refund(order, 60.0))
    assert shop.engine.spend_points("u1", 150, "spent-at-till", NOW) is not None
    assert shop.balance("u1") == 10
    # 60 more are due; only 10 are left: they go, the rest of what was spent is forgiven.
    [record] = shop.send(refund(order, 90.0, n=1))
    assert record.points_delta == -10
    assert shop.balance("u1") == 0


def test_a_refund_before_its_order_is_taken_back_when_the_points_are_granted(shop: Shop) -> None:
    order = buy("u2", amount=200.0)
    assert shop.send(refund(order, 50.0)) == []
    records = shop.send(order)
    assert sorted((r.kind, r.points_delta) for r in records) == [("grant", None), ("points_adjust", -25)]
    assert shop.balance("u2") == 75


def test_a_rebuild_from_the_records_gives_back_the_same_points_and_takes_nothing_again(shop: Shop) -> None:
    order = buy("u3", amount=100.0)
    records = [*shop.send(order), *shop.send(refund(order, 30.0))]
    spent = shop.engine.spend_points("u3", 60, "till", NOW)
    assert spent is not None
    records += [spent, *shop.send(refund(order, 70.0, n=1))]  # 70 more due, 10 left
    assert [r.points_delta for r in records if r.reason == "refund"] == [-30, -10]
    before = lots(shop.engine.ledger.read("u3"))

    fold = LedgerFold(shop.engine.config)
    for record in records:
        fold.add(record)
    client = shop.engine.ledger.client
    client.flushdb()
    shop.state.apply({("u3", "touch.purchase:0"): [encode(e, NOW, n) for n, e in enumerate(
        [order, refund(order, 30.0), refund(order, 70.0, n=1)])]})
    write(client, fold, ["u3"])
    assert lots(shop.engine.ledger.read("u3")) == before
    # The worker replays the input after a rebuild: nothing is taken a second time.
    assert [r for r in shop.engine.on_events([(order, NOW), (refund(order, 30.0), NOW)], NOW)
            if r.kind != "grant"] == []
    assert lots(shop.engine.ledger.read("u3")) == before


@pytest.fixture
def coupons(redis_url: str) -> Shop:
    shop = Shop(redis_url)
    doc = small_config(seven={"type": "coupon", "off_cents": 700, "validity": {"days": 7}})
    shop.engine = engine_for(redis_url, msgspec.convert(doc, RewardsConfig))
    return shop


def coupon_of(records: list[RewardRecord]) -> str:
    return next(item.item_id for r in records if r.kind == "grant" for item in r.items)


def test_a_coupon_redeemed_on_an_order_refunded_in_full_is_given_back_while_valid(coupons: Shop) -> None:
    coupon = coupon_of(coupons.send(buy("u4", amount=20.0)))
    used = buy("u4", n=1, amount=100.0, coupons=(coupon,))
    assert [r.kind for r in coupons.send(used)] == ["redemption"]
    assert coupons.send(refund(used, 40.0)) == []  # in part: the coupon stays used
    [returned] = coupons.send(refund(used, 60.0, n=1))
    assert (returned.kind, returned.order_id, returned.reason) == ("redemption_returned", used.order_id, "refund")
    assert coupons.engine.ledger.read("u4").status[coupon] == "active"
    assert coupons.engine.on_events([(refund(used, 60.0, n=1), NOW)], NOW) == []  # once
    # Used again, refunded again after it expired: it stays used.
    again = buy("u4", n=2, amount=100.0, coupons=(coupon,))
    assert [r.kind for r in coupons.send(again)] == ["redemption"]
    late = msgspec.structs.replace(refund(again, 100.0), ts=NOW + 1000)
    coupons.state.apply({("u4", "touch.purchase:0"): [encode(late, NOW + 1000, 99)]})
    assert coupons.engine.on_events([(late, NOW + 1000)], NOW + 8 * 86_400_000) == []
    assert coupons.engine.ledger.read("u4").status[coupon] == "redeemed"


def test_a_rebuild_from_the_records_keeps_a_given_back_coupon_active(coupons: Shop) -> None:
    records = coupons.send(buy("u5", amount=20.0))
    coupon = coupon_of(records)
    used = buy("u5", n=1, amount=100.0, coupons=(coupon,))
    records += [*coupons.send(used), *coupons.send(refund(used, 100.0))]
    assert records[-1].kind == "redemption_returned"
    fold = LedgerFold(coupons.engine.config)
    for record in records:
        fold.add(record)
    client = coupons.engine.ledger.client
    client.flushdb()
    write(client, fold, ["u5"])
    assert coupons.engine.ledger.read("u5").status[coupon] == "active"
    coupons.state.apply({("u5", "touch.purchase:0"): [encode(e, NOW, n) for n, e in enumerate(
        [buy("u5", amount=20.0), used, refund(used, 100.0)])]})
    assert coupons.engine.on_events([(refund(used, 100.0), NOW)], NOW) == []  # the replay gives nothing twice
