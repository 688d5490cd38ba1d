"""The reward engine against real Redis: concurrency from parallel processes,
budgets, inventory, referral step-ups, the injected clock, replays and kill -9."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
from collections import Counter
from typing import Any

import jsonschema
import msgspec
import pytest
import redis

from tests.fixtures.paths import ROOT
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.rewards import catalogue, redeem, redemption
from tierflow.pipeline.rewards.catalogue import DAY_MS
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.engine import RewardEngine
from tierflow.pipeline.rewards.ledger import CampaignKeys, RedeemCall, ReserveCall, RewardKeys
from tierflow.pipeline.rewards.rules import GrantIntent
from tierflow.pipeline.rewards.wallet import RewardError
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.state.summary import encode as encode_event
from tierflow.schemas.events import Interaction, Item, Purchase
from tierflow.schemas.reward_grants import RewardRecord, encode

NOW = 1_777_000_000_000  # 2026-04-24, the engine's injected clock
SCHEMA = json.loads((ROOT / "schemas" / "reward.grants.json").read_text())
SPAWN = multiprocessing.get_context("spawn")


def engine_for(url: str, config: RewardsConfig | None = None) -> RewardEngine:
    return RewardEngine(connect(url), config or load_config().rewards)


def small_config(**prizes: dict[str, Any]) -> dict[str, Any]:
    """One campaign `c` with a budget of 100.00 and a rule per prize (`r_<prize>`) on purchases."""
    return {
        "shop": "shop1", "point_value_cents": 1, "withdraw_min_cents": 1000,
        "prizes": prizes,
        "campaigns": {"c": {"budget_cents": 10_000}},
        "rules": {f"r_{pid}": {"campaign": "c", "prize": pid, "trigger": {"on": "event", "event": "purchase"}}
                  for pid in prizes},
    }


def buy(user: str, n: int = 0, ts: int = NOW, coupons: tuple[str, ...] = (), category: str = "snacks",
        amount: float = 150.0) -> Purchase:
    return Purchase(event_id=f"{user}-p{n}", user_id=user, ts=ts, channel="app", order_id=f"{user}-o{n}",
                    amount=amount, currency="CNY", items=[Item(sku="S1", category=category, qty=1, price=amount)],
                    coupons=list(coupons))


def accept(user: str, n: int, ts: int = NOW) -> Interaction:
    return Interaction(event_id=f"{user}-ra{n}", user_id=user, ts=ts, channel="app", kind="referral_accept",
                       target=f"friend{n}")


def upgrade(user: str, version: int = 1) -> dict[str, Any]:
    """A `tier.changes` record value, as the tier stage publishes it."""
    return {"user_id": user, "dimension": "membership", "old": "ordinary", "new": "super", "version": version,
            "seq": version, "reason": "event", "scores": {"r": 5, "f": 4, "m": 5}, "points": 2000,
            "repurchases": 1, "event_time": "2026-04-24T03:06:40Z"}


def campaign_hash(url: str, campaign: str) -> dict[str, str]:
    return connect(url).hgetall(CampaignKeys.of(campaign).hash)


def validate_outbox(engine: RewardEngine) -> list[RewardRecord]:
    """Every record waiting in the outbox satisfies the published contract."""
    batch = engine.outbox(100_000)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for record in batch.records:
        validator.validate(json.loads(encode(record)))
    return batch.records


# --- parallel processes ---------------------------------------------------------


def _claim(url: str, users: list[str], barrier: Any, results: Any) -> None:
    engine = engine_for(url)
    barrier.wait()
    out = []
    for user in users:
        claim = engine.claim_code("NEW666", user, NOW)
        out.append((user, claim.status, claim.coupon.item_id if claim.coupon else None))
    results.put(out)


def run_parallel(target: Any, chunks: list[list[Any]], *args: Any) -> list[Any]:
    barrier, results = SPAWN.Barrier(len(chunks)), SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*args, chunk, barrier, results)) for chunk in chunks]
    for p in procs:
        p.start()
    gathered = [row for _ in procs for row in results.get(timeout=300)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return gathered


def test_universal_code_under_concurrency(redis_url: str) -> None:
    """160 claimants in 4 processes race for NEW666's 100 coupons."""
    users = [f"u{i:03d}" for i in range(160)]
    outcomes = run_parallel(_claim, [users[i::4] for i in range(4)], redis_url)
    statuses = Counter(status for _, status, _ in outcomes)
    assert statuses == {"granted": 100, "exhausted": 60}
    issued = [coupon for _, status, coupon in outcomes if status == "granted"]
    assert sorted(issued) == [f"NEW666-{n:03d}" for n in range(1, 101)]  # every coupon once, none twice
    engine = engine_for(redis_url)
    winner, _, coupon = next(o for o in outcomes if o[1] == "granted")
    again = engine.claim_code("NEW666", winner, NOW)
    assert again.status == "already_claimed" and again.coupon is not None and again.coupon.item_id == coupon
    assert engine.claim_code("NEW666", "late_user", NOW).status == "exhausted"
    report = engine.report(NOW)
    campaign = report["campaigns"]["new_customer"]  # type: ignore[index]
    assert campaign["pools"]["new666"]["left"] == 0
    assert campaign["spent_cents"] == 100 * 600 and campaign["grants"] == 100
    assert len(validate_outbox(engine)) == 100


def _spend(url: str, doc: dict[str, Any], users: list[str], barrier: Any, results: Any) -> None:
    engine = engine_for(url, msgspec.convert(doc, RewardsConfig))
    barrier.wait()
    results.put([r.cost_cents for user in users for r in engine.on_event(buy(user), NOW, NOW)])


def test_budget_under_concurrency_is_never_overspent(redis_url: str) -> None:
    """Two workers grant 7.00 coupons against a 100.00 budget: 14 fit, the 15th never does."""
    doc = small_config(seven={"type": "coupon", "off_cents": 700, "validity": {"days": 7}})
    costs = run_parallel(_spend, [[f"a{i}" for i in range(25)], [f"b{i}" for i in range(25)]], redis_url, doc)
    assert costs == [700] * 14
    state = campaign_hash(redis_url, "c")
    assert int(state["spent"]) == 9800 and int(state["denied:budget"]) == 36
    report = engine_for(redis_url, msgspec.convert(doc, RewardsConfig)).report(NOW)
    assert report["campaigns"]["c"]["left_cents"] == 200  # type: ignore[index]
    assert report["grants_by_prize_type"] == {"coupon": 14}


def _stream(url: str, events: list[bytes], barrier: Any, results: Any) -> None:
    engine = engine_for(url)
    decoded = [msgspec.json.decode(e, type=Interaction) for e in events]
    barrier.wait()
    for n, event in enumerate(decoded):
        engine.on_event(event, NOW, NOW)
        if n == len(decoded) // 4:
            results.put(["quarter"])  # tell the parent to kill us now, mid-stream


def test_kill_9_mid_stream_then_replay_grants_everything_once(redis_url: str) -> None:
    """A worker dies by SIGKILL while granting; the replay of the same events
    completes what was cut short and grants nothing twice."""
    events = [accept(f"k{i:04d}", 0) for i in range(900)]  # within the 10,000.00 budget
    barrier, results = SPAWN.Barrier(1), SPAWN.Queue()
    proc = SPAWN.Process(target=_stream, args=(redis_url, [msgspec.json.encode(e) for e in events], barrier, results))
    proc.start()
    assert results.get(timeout=300) == ["quarter"]
    os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    per_user = 500 + 500  # referral coupon step 1 + referral envelope
    spent_at_kill = int(campaign_hash(redis_url, "referral")["spent"])
    assert 0 < spent_at_kill < len(events) * per_user  # the kill did land mid-stream

    engine = engine_for(redis_url)
    for event in events:
        engine.on_event(event, NOW, NOW)
    for event in events[:100]:  # and once more: nothing new
        assert engine.on_event(event, NOW, NOW) == []
    assert int(campaign_hash(redis_url, "referral")["spent"]) == len(events) * per_user
    records = validate_outbox(engine)
    assert len(records) == len({r.record_id for r in records}) == 2 * len(events)
    for user in ("k0000", "k0450", "k0899"):
        wallet = engine.wallet(user, NOW)
        assert len(wallet["coupons"]) == 1 and len(wallet["envelopes"]["items"]) == 1  # type: ignore[index]


# --- single-process effects ---------------------------------------------------------


def test_a_large_pool_is_minted_once_with_wide_numbers(redis_url: str) -> None:
    doc = small_config(one={"type": "coupon", "off_cents": 100, "validity": {"days": 7}},
                       big={"type": "universal_code", "code": "BIG", "coupon": "one", "count": 2500})
    doc["campaigns"]["c"]["budget_cents"] = None
    doc["rules"] = {"claim": {"campaign": "c", "prize": "big", "trigger": {"on": "code", "code": "BIG"}}}
    engine = engine_for(redis_url, msgspec.convert(doc, RewardsConfig))
    codes = {engine.claim_code("BIG", f"u{n}", NOW).coupon.item_id for n in range(3)}  # type: ignore[union-attr]
    assert len(codes) == 3 and all(re.fullmatch(r"BIG-\d{4}", c) and 1 <= int(c[4:]) <= 2500 for c in codes)
    assert engine.report(NOW)["campaigns"]["c"]["pools"]["big"]["left"] == 2497  # type: ignore[index]


def test_replayed_tier_change_grants_once(redis_url: str) -> None:
    engine = engine_for(redis_url)
    first = engine.on_tier_change(upgrade("u1"), NOW)
    assert [r.prize_type for r in first] == ["gift_pack"]
    assert {i.type for i in first[0].items} == {"coupon", "points", "third_party"}
    assert engine.on_tier_change(upgrade("u1"), NOW + 1) == []
    assert int(campaign_hash(redis_url, "vip_upgrade")["spent"]) == first[0].cost_cents
    # Entering the tier again later is a new trigger, but the rule allows one grant per user.
    assert engine.on_tier_change(upgrade("u1", version=3), NOW) == []
    assert int(campaign_hash(redis_url, "vip_upgrade")["spent"]) == first[0].cost_cents
    assert engine.wallet("u1", NOW)["points"]["balance"] == 2000  # type: ignore[index]


def test_malformed_tier_change_is_a_value_error_and_grants_nothing(redis_url: str) -> None:
    engine = engine_for(redis_url)
    for broken in ({**upgrade("m1"), "dimension": "mood"}, {**upgrade("m1"), "event_time": 1_777_000_000_000},
                   {k: v for k, v in upgrade("m1").items() if k != "version"}):
        with pytest.raises(ValueError):
            engine.on_tier_change(broken, NOW)
    assert engine.outbox(10).records == []


def test_crash_after_reservation_is_completed_by_the_replay(redis_url: str) -> None:
    """The worker reserved the budget, then died before writing the wallet."""
    engine = engine_for(redis_url)
    intent = GrantIntent("super_upgrade", "vip_upgrade", "super_pack", "u2", "tier:membership:v1", NOW)
    cost = catalogue.needs("super_pack", engine.config.prizes, 1).cost_cents
    [reservation] = engine.ledger.reserve_all([ReserveCall("vip_upgrade", intent.idempotency_key, cost, 2_000_000)])
    assert reservation.status == "ok"
    [record] = engine.on_tier_change(upgrade("u2"), NOW)  # the replay
    assert record.cost_cents == cost
    assert int(campaign_hash(redis_url, "vip_upgrade")["spent"]) == cost  # charged once


def test_gift_pack_with_one_component_out_of_stock_grants_nothing(redis_url: str) -> None:
    doc = small_config(
        ten={"type": "coupon", "off_cents": 1000, "validity": {"days": 7}},
        bag={"type": "physical", "sku": "BAG", "unit_cost_cents": 900, "stock": 1},
        pack={"type": "gift_pack", "items": ["ten", "bag"]},
    )
    doc["rules"] = {"r_pack": doc["rules"]["r_pack"]}
    engine = engine_for(redis_url, msgspec.convert(doc, RewardsConfig))
    [granted] = engine.on_event(buy("first"), NOW, NOW)
    assert [i.type for i in granted.items] == ["coupon", "physical"]
    assert engine.on_event(buy("second"), NOW, NOW) == []
    assert engine.wallet("second", NOW)["coupons"] == []  # not even the coupon
    state = campaign_hash(redis_url, "c")
    assert int(state["spent"]) == 1900 and int(state["denied:stock"]) == 1
    report = engine.report(NOW)["campaigns"]["c"]  # type: ignore[index]
    assert report["inventory"] == {"bag": {"stock": 1, "used": 1, "left": 0}}


def test_per_user_limit_releases_the_reservation(redis_url: str) -> None:
    """Refused on the user side: budget and stock go back to the campaign."""
    doc = small_config(bag={"type": "physical", "sku": "BAG", "unit_cost_cents": 900, "stock": 5})
    doc["rules"]["r_bag"]["per_user"] = 2
    engine = engine_for(redis_url, msgspec.convert(doc, RewardsConfig))
    granted = [r for n in range(4) for r in engine.on_event(buy("u1", n), NOW, NOW)]
    assert len(granted) == 2
    assert int(campaign_hash(redis_url, "c")["spent"]) == 1800
    assert engine.report(NOW)["campaigns"]["c"]["inventory"]["bag"]["left"] == 3  # type: ignore[index]


def test_referral_coupon_is_cancelled_and_reissued(redis_url: str) -> None:
    engine = engine_for(redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    records = [r for n in range(1, 6) for r in engine.on_event(accept("ref", n), NOW, NOW)]
    steps = [r for r in records if r.prize == "referral_coupon"]
    assert [(r.kind, r.items[0].value_cents) for r in steps] == [
        ("grant", 500), ("cancellation", 500), ("grant", 1500), ("cancellation", 1500), ("grant", 3000)]
    assert steps[1].replaced_by == steps[2].items[0].item_id and steps[3].replaced_by == steps[4].items[0].item_id
    first_id = steps[0].items[0].item_id
    stored_first = client.hget(RewardKeys.of("ref").items, first_id)
    assert stored_first == msgspec.json.encode(steps[0].items[0]).decode()  # never mutated, only its status
    coupons = {c["item_id"]: c for c in engine.wallet("ref", NOW)["coupons"]}  # type: ignore[index]
    assert [c["status"] for c in coupons.values() if c["status"] == "active"] == ["active"]
    assert coupons[steps[4].items[0].item_id]["status"] == "active"
    assert coupons[first_id]["status"] == "cancelled"
    # Budget: 5.00 + (15.00 - 5.00) + (30.00 - 15.00) for the coupon, 5 x 5.00 envelopes.
    assert int(campaign_hash(redis_url, "referral")["spent"]) == 3000 + 2500
    assert [r for n in range(1, 6) for r in engine.on_event(accept("ref", n), NOW, NOW)] == []


def test_a_redeemed_referral_coupon_stops_growing(redis_url: str) -> None:
    engine = engine_for(redis_url)
    [coupon] = [r.items[0] for r in engine.on_event(accept("r2", 1), NOW, NOW) if r.prize == "referral_coupon"]
    [redeemed] = engine.on_event(buy("r2", coupons=(coupon.item_id,)), NOW, NOW)
    assert redeemed.kind == "redemption" and redeemed.discount_cents == 500
    later = [r for n in range(2, 5) for r in engine.on_event(accept("r2", n), NOW, NOW)]
    assert {r.prize for r in later} == {"referral_cash"}


def test_envelope_is_pending_until_the_injected_clock_says_otherwise(redis_url: str) -> None:
    engine = engine_for(redis_url)
    granted_at = NOW  # "23 April"; pending_days = 8 -> usable "1 May"
    for n in (1, 2):
        engine.on_event(accept("env", n, ts=granted_at), granted_at, granted_at)
    week = engine.wallet("env", granted_at + 7 * DAY_MS)["envelopes"]  # type: ignore[index]
    assert (week["pending_cents"], week["available_cents"], week["withdrawable"]) == (1000, 0, False)
    with pytest.raises(RewardError, match=r"only 0\.00 is available"):
        engine.withdraw("env", 1000, "w1", granted_at + 7 * DAY_MS)
    usable = granted_at + 8 * DAY_MS
    assert engine.wallet("env", usable)["envelopes"]["available_cents"] == 1000  # type: ignore[index]
    with pytest.raises(RewardError, match=r"smallest withdrawal is 10\.00"):
        engine.withdraw("env", 500, "w0", usable)
    record = engine.withdraw("env", 1000, "w1", usable)
    assert record is not None and record.amount_cents == 1000
    assert engine.withdraw("env", 1000, "w1", usable) is None  # the same request twice pays once
    after = engine.wallet("env", usable)["envelopes"]  # type: ignore[index]
    assert (after["available_cents"], after["withdrawn_cents"]) == (0, 1000)
    with pytest.raises(RewardError):
        engine.withdraw("env", 1000, "w2", usable)


def test_points_expire_on_the_injected_clock_after_spending_the_soonest(redis_url: str) -> None:
    engine = engine_for(redis_url)
    engine.on_tier_change(upgrade("pts"), NOW)  # 2000 points, 365 days
    adjusted = engine.adjust_points("pts", 100, "goodwill-1", NOW, "complaint", expires_days=None)
    assert adjusted is not None
    spent = engine.spend_points("pts", 500, "order-9", NOW + DAY_MS)
    assert spent is not None and spent.points_delta == -500
    assert engine.spend_points("pts", 500, "order-9", NOW + DAY_MS) is None  # once per ref
    assert engine.expire_points(NOW + 364 * DAY_MS, 10) == []
    [expired] = engine.expire_points(NOW + 366 * DAY_MS, 10)
    assert (expired.kind, expired.points_delta) == ("expiry", -1500)
    assert engine.expire_points(NOW + 400 * DAY_MS, 10) == []
    points = engine.wallet("pts", NOW + 400 * DAY_MS)["points"]  # type: ignore[index]
    assert points["balance"] == 100 and [lot["remaining"] for lot in points["lots"]] == [100]
    assert engine.report(NOW + 400 * DAY_MS)["points"] == {"outstanding": 100, "liability_cents": 100,
                                                          "expired_unswept": 0}
    with pytest.raises(RewardError, match="not enough points"):
        engine.spend_points("pts", 101, "order-10", NOW + 400 * DAY_MS)


def test_purchases_redeem_coupons_once_and_say_why_not(redis_url: str) -> None:
    engine = engine_for(redis_url)
    coupon = engine.claim_code("NEW666", "buyer", NOW).coupon
    assert coupon is not None
    [redeemed] = engine.on_event(buy("buyer", 1, coupons=(coupon.item_id,), amount=20.0), NOW, NOW)
    assert (redeemed.kind, redeemed.discount_cents, redeemed.order_cents) == ("redemption", 600, 2000)
    assert engine.on_event(buy("buyer", 1, coupons=(coupon.item_id,), amount=20.0), NOW, NOW) == []  # replay
    [again] = engine.on_event(buy("buyer", 2, coupons=(coupon.item_id, "NOPE-1")), NOW, NOW)[:1]
    assert (again.kind, again.reason) == ("redemption_rejected", "coupon_redeemed")
    later = NOW + 31 * DAY_MS
    other = engine.claim_code("NEW666", "late", NOW).coupon
    assert other is not None
    [too_late] = engine.on_event(buy("late", 1, ts=later, coupons=(other.item_id,)), later, later)
    assert too_late.reason == "expired"
    campaign = engine.report(NOW)["campaigns"]["new_customer"]  # type: ignore[index]
    assert (campaign["redemptions"], campaign["discount_cents"]) == (1, 600)
    validate_outbox(engine)


def test_a_coupon_redeemed_between_read_and_write_is_rejected(redis_url: str) -> None:
    """Two purchases name one coupon; both read it active, the first write wins."""
    engine = engine_for(redis_url)
    coupon = engine.claim_code("NEW666", "race", NOW).coupon
    assert coupon is not None
    second = buy("race", 2, coupons=(coupon.item_id,))
    order = redeem.Order.from_purchase(second, NOW, engine.config.shop)
    planned = redemption.plan(second, coupon.item_id, engine.ledger.read("race"), order, NOW)
    [first] = engine.on_event(buy("race", 1, coupons=(coupon.item_id,)), NOW, NOW)
    assert first.kind == "redemption"
    [lost] = engine.ledger.write_all([RedeemCall("race", [planned])])[0]  # type: ignore[misc]
    assert (lost.kind, lost.reason, lost.discount_cents) == ("redemption_rejected", "coupon_not_active", None)


def test_first_purchase_is_read_from_the_state_store(redis_url: str) -> None:
    """The worker applies an event to the state store, then hands it to the engine."""
    config = load_config()
    client = connect(redis_url)
    store = StateStore(client, config.state.retention_days)
    engine = RewardEngine(client, config.rewards)

    def feed(event: Purchase, offset: int) -> list[str | None]:
        ts = int(event.ts)
        store.apply({(event.user_id, "touch.purchase:0"): [encode_event(event, ts, offset)]})
        return [r.prize for r in engine.on_event(event, ts, NOW)]

    assert feed(buy("fp", 1, ts=NOW - DAY_MS), 0) == ["first_points"]
    assert feed(buy("fp", 2, ts=NOW), 1) == []
    # Out of order: the later purchase is the first one known, and the earlier one
    # arriving afterwards does not earn the points a second time.
    assert feed(buy("late", 2, ts=NOW), 2) == ["first_points"]
    assert feed(buy("late", 1, ts=NOW - DAY_MS), 3) == []


def test_physical_prize_waits_for_an_address(redis_url: str) -> None:
    engine = engine_for(redis_url)
    join = Interaction(event_id="j1", user_id="g1", ts=NOW, channel="app", kind="campaign_join", target="x")
    [pack] = engine.on_event(join, NOW, NOW)
    [bag] = [i for i in pack.items if i.type == "physical"]
    assert engine.wallet("g1", NOW)["goods"][0]["status"] == "awaiting_address"  # type: ignore[index]
    [ready] = engine.set_address("g1", "1 Harbour Rd", NOW)
    assert ready.kind == "fulfilment" and ready.items[0].fulfilment.address == "1 Harbour Rd"  # type: ignore[union-attr]
    assert ready.items[0].item_id == bag.item_id
    assert engine.set_address("g1", "1 Harbour Rd", NOW) == []
    assert engine.wallet("g1", NOW)["goods"][0]["status"] == "ready"  # type: ignore[index]


def test_outbox_keeps_records_until_acknowledged(redis_url: str) -> None:
    engine = engine_for(redis_url)
    engine.on_tier_change(upgrade("o1"), NOW)
    engine.claim_code("NEW666", "o2", NOW)
    batch = engine.outbox(10)
    assert {r.user_id for r in batch.records} == {"o1", "o2"}
    engine.on_tier_change(upgrade("o2"), NOW)  # arrives between read and ack
    engine.ack(batch)
    left = engine.outbox(10)
    assert [(r.user_id, r.prize) for r in left.records] == [("o2", "super_pack")]
    engine.ack(left)
    assert engine.outbox(10).records == []
