"""Refunds in apply.lua on a real Redis: net spend in the order's day and lifetime, a
fully refunded order no longer a purchase, the same result whatever the arrival order
(refund before its order, duplicates, replays), refunds beyond the order refused."""

from __future__ import annotations

import random

import msgspec
import pytest

from tests.fixtures import truth
from tierflow.pipeline.ingest.validate import parse_ts
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.state.summary import DAY_MS, Summary, UserKeys, encode, order_key, summarize
from tierflow.schemas.events import EVENT_TYPES, Event

NOW = 1_795_000_000_000
SOURCE = "touch.purchase:0"
WINDOWS = [7, 30]
RETENTION = 400


def purchase(n: int, amount: float, days_ago: int) -> dict:
    return {"event_id": f"p{n}", "type": "purchase", "user_id": "u1", "ts": NOW - days_ago * DAY_MS,
            "channel": "app", "order_id": f"o{n}", "amount": amount, "currency": "CNY",
            "items": [{"sku": f"s{n}", "category": "snacks", "qty": 1, "price": amount}]}


def refund(n: int, order: int, amount: float, days_ago: int) -> dict:
    return {"event_id": f"r{n}", "type": "refund", "user_id": "u1", "ts": NOW - days_ago * DAY_MS,
            "channel": "store", "order_id": f"o{order}", "amount": amount, "currency": "CNY", "reason": "returned"}


def event(doc: dict) -> Event:
    return msgspec.convert(doc, EVENT_TYPES[doc["type"]])


def send(store: StateStore, docs: list[dict], first_offset: int) -> dict[int, str]:
    """Apply in one call, offsets from first_offset; the refusals by position."""
    encoded = [encode(event(d), parse_ts(d["ts"]), first_offset + i, NOW) for i, d in enumerate(docs)]
    result = store.apply({("u1", SOURCE): encoded})
    return {position: reason for (_, position), reason in result.refused.items()}


def summary(store: StateStore, as_of: int = NOW) -> Summary:
    raw = store.read("u1")
    assert raw is not None
    return summarize("u1", raw, as_of, WINDOWS, RETENTION)


def assert_truth(store: StateStore, docs: list[dict], as_of: int = NOW) -> None:
    got, want = summary(store, as_of), truth.user_truth(docs, as_of, WINDOWS)["u1"]
    assert got.frequency == want["frequency"]
    assert {k: v / 100 for k, v in got.monetary_cents.items()} == want["monetary"]
    assert (got.recency_days, got.first_purchase_ms, got.last_purchase_ms) == (
        want["recency_days"], want["first_purchase_ms"], want["last_purchase_ms"])
    assert (got.counts["refund"], got.refunded_cents / 100) == (want["refunds"], want["refunded"])
    assert got.channels == want["channels"]


@pytest.fixture
def store(redis_url: str) -> StateStore:
    return StateStore(connect(redis_url), RETENTION)


def test_a_partial_refund_lowers_the_orders_day_and_a_full_one_removes_the_purchase(store: StateStore) -> None:
    docs = [purchase(1, 100.0, 20), purchase(2, 50.0, 3)]
    send(store, docs, 0)
    assert send(store, [refund(1, 2, 20.0, 1)], 2) == {}
    got = summary(store)
    # 50 - 20 in the order's day (3 days ago), not the refund's: the 7-day window shows 30.
    assert got.monetary_cents == {"7d": 3000, "30d": 13000, "lifetime": 13000}
    assert got.frequency == {"7d": 1, "30d": 2, "lifetime": 2}
    assert send(store, [refund(2, 2, 30.0, 0)], 3) == {}
    got = summary(store)
    assert got.monetary_cents == {"7d": 0, "30d": 10000, "lifetime": 10000}
    # The newest order is gone: frequency and recency fall back to the order 20 days ago.
    assert got.frequency == {"7d": 0, "30d": 1, "lifetime": 1}
    assert (got.recency_days, got.last_purchase_ms) == (20, NOW - 20 * DAY_MS)
    assert (got.counts["refund"], got.refunded_cents) == (2, 5000)
    assert_truth(store, [*docs, refund(1, 2, 20.0, 1), refund(2, 2, 30.0, 0)])


def test_refunding_the_only_order_leaves_a_customer_without_purchases(store: StateStore) -> None:
    send(store, [purchase(1, 80.0, 2), refund(1, 1, 80.0, 1)], 0)
    got = summary(store)
    assert got.frequency["lifetime"] == 0 and got.monetary_cents["lifetime"] == 0
    assert (got.recency_days, got.first_purchase_ms, got.last_purchase_ms) == (None, None, None)
    assert store.client.hgetall(UserKeys.of("u1").days) == {}


def test_refunds_beyond_the_order_are_refused_and_change_nothing(store: StateStore) -> None:
    send(store, [purchase(1, 30.0, 2)], 0)
    assert send(store, [refund(1, 1, 10.0, 1), refund(2, 1, 25.0, 1), refund(3, 1, 20.0, 0)], 1) == {
        1: "refund_exceeds_order"}
    assert summary(store).monetary_cents["lifetime"] == 0
    # Sent again, the refused refund is refused again (its dead letter is sent at least once).
    assert send(store, [refund(2, 1, 25.0, 1)], 9) == {0: "refund_exceeds_order"}
    assert send(store, [refund(4, 1, 0.01, 0)], 10) == {0: "refund_exceeds_order"}
    assert_truth(store, [purchase(1, 30.0, 2), refund(1, 1, 10.0, 1), refund(3, 1, 20.0, 0)])


def test_a_refund_before_its_order_waits_for_it(store: StateStore) -> None:
    assert send(store, [refund(1, 1, 15.0, 1)], 0) == {}
    got = summary(store)
    assert (got.frequency["lifetime"], got.monetary_cents["lifetime"], got.counts["refund"]) == (0, 0, 0)
    send(store, [purchase(1, 40.0, 3)], 1)
    assert summary(store).monetary_cents == {"7d": 2500, "30d": 2500, "lifetime": 2500}
    assert summary(store).counts["refund"] == 1
    # Refunds that arrived first are capped at the order's amount when it comes.
    send(store, [refund(2, 2, 60.0, 1), purchase(2, 50.0, 2)], 2)
    got = summary(store)
    assert got.monetary_cents["lifetime"] == 2500 and got.frequency["lifetime"] == 1


def test_old_orders_and_waiting_refunds_leave_with_the_retention(redis_url: str) -> None:
    store = StateStore(connect(redis_url), 30)
    send(store, [purchase(1, 10.0, 100), refund(1, 9, 5.0, 90), purchase(2, 10.0, 1)], 0)
    assert list(store.client.hgetall(UserKeys.of("u1").orders)) == [order_key("o2")]


def history(rng: random.Random) -> list[dict]:
    """Orders over 60 days, some refunded in part or in full (in one or two refunds), a
    refund of an order never sent, and browses."""
    docs: list[dict] = []
    refunds = 0
    for n in range(rng.randint(1, 8)):
        cents = rng.randint(0, 20_000)
        days_ago = rng.randint(0, 60)
        docs.append(purchase(n, cents / 100, days_ago))
        third = cents // 3
        for part in rng.choice([[], [cents], [cents // 2], [third, cents - third], [third // 2, third]]):
            refunds += 1
            docs.append(refund(refunds, n, part / 100, max(0, days_ago - rng.randint(0, 5))))
    docs.append(refund(99, 77, 1.0, 0))
    docs.append({"event_id": "b1", "type": "browse", "user_id": "u1", "ts": NOW, "channel": "web", "page": "home"})
    return docs


@pytest.mark.parametrize("seed", range(12))
def test_any_arrival_order_with_duplicates_and_replays_equals_the_batch_truth(
    store: StateStore, seed: int
) -> None:
    rng = random.Random(seed)
    docs = history(rng)
    arrival = docs + rng.sample(docs, k=len(docs) // 3)  # resends
    rng.shuffle(arrival)
    offset = 0
    while arrival:
        size = rng.randint(1, 4)
        chunk, arrival = arrival[:size], arrival[size:]
        assert send(store, chunk, offset) == {}
        if rng.random() < 0.3:  # a replay of the same records at their offsets
            assert send(store, chunk, offset) == {}
        offset += size
    for days_back in (0, 10, 40):
        assert_truth(store, docs, NOW - days_back * DAY_MS)


def test_a_synthetic_population_with_refunds_shuffled_and_resent_equals_the_truth(redis_url: str) -> None:
    from tierflow.pipeline.demo.synth import Population

    docs = list(Population(300, 120, NOW, seed=5, run="rf", refund_share=0.3).events())
    assert sum(d["type"] == "refund" for d in docs) > 100
    rng = random.Random(5)
    arrival = docs + rng.sample(docs, len(docs) // 10)
    rng.shuffle(arrival)
    store = StateStore(connect(redis_url), RETENTION)
    groups: dict[tuple[str, str], list[list[object]]] = {}
    for offset, d in enumerate(arrival):
        groups.setdefault((d["user_id"], SOURCE), []).append(encode(event(d), parse_ts(d["ts"]), offset, NOW))
    assert store.apply(groups).refused == {}
    for as_of in (NOW, NOW - 50 * DAY_MS):
        for user, want in truth.user_truth(docs, as_of, WINDOWS).items():
            raw = store.read(user)
            assert raw is not None
            got = summarize(user, raw, as_of, WINDOWS, RETENTION)
            assert (got.frequency, got.recency_days, got.last_purchase_ms) == (
                want["frequency"], want["recency_days"], want["last_purchase_ms"]), user
            assert {k: v / 100 for k, v in got.monetary_cents.items()} == want["monetary"], user
            assert (got.counts["refund"], got.refunded_cents / 100) == (want["refunds"], want["refunded"]), user
