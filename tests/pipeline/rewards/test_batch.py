"""The batch path against real Redis: a consumer batch granted in a few round trips
writes exactly what the same events one at a time write (duplicates in the batch,
several purchases of one customer, coupons redeemed twice, a coupon granted and
redeemed in one batch, referral step-ups, a budget running out mid-batch); points
expire in bounded slices; scripts Redis lost are loaded again."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest
import redis
from redis.commands.core import Script

from tests.pipeline.rewards.test_ledger import NOW, accept, buy, engine_for, upgrade, validate_outbox
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.rewards import catalogue, granting
from tierflow.pipeline.rewards.catalogue import DAY_MS
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.ledger import CampaignKeys, GrantCall, RewardKeys
from tierflow.pipeline.rewards.rules import GrantIntent
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.state.summary import encode as encode_event
from tierflow.schemas.events import Event, Interaction, Purchase
from tierflow.schemas.tier_changes import TierChange

BUDGET = 6_000  # 60.00: runs out part-way through the batch below


def config_doc() -> dict[str, Any]:
    return {
        "shop": "shop1", "point_value_cents": 1, "withdraw_min_cents": 1000,
        "prizes": {
            "seven": {"type": "coupon", "off_cents": 700, "validity": {"days": 7}, "issuer": "platform"},
            "welcome": {"type": "points", "points": 300, "expires_days": 30},
            "ref": {"type": "referral_coupon", "threshold_cents": 100, "validity": {"days": 60},
                    "steps": [{"invites": 1, "off_cents": 200}, {"invites": 2, "off_cents": 400},
                              {"invites": 4, "off_cents": 900}]},
            "envelope": {"type": "cash_envelope", "amount_cents": 100, "pending_days": 1},
        },
        "campaigns": {"shop": {"budget_cents": BUDGET}, "friends": {"budget_cents": None}},
        "rules": {
            "first": {"campaign": "shop", "prize": "welcome",
                      "trigger": {"on": "event", "event": "purchase", "first_purchase": True}},
            "coupon": {"campaign": "shop", "prize": "seven", "per_user": 2,
                       "trigger": {"on": "event", "event": "purchase"}},
            "steps": {"campaign": "friends", "prize": "ref",
                      "trigger": {"on": "event", "event": "interaction", "kind": "referral_accept"}},
            "envelopes": {"campaign": "friends", "prize": "envelope", "per_user": 3,
                          "trigger": {"on": "event", "event": "interaction", "kind": "referral_accept"}},
        },
    }


CONFIG = msgspec.convert(config_doc(), RewardsConfig)


def coupon_of(user: str, purchase: int) -> str:
    """The id of the coupon rule `coupon` issues for a purchase (item ids are deterministic)."""
    key = GrantIntent("coupon", "shop", "seven", user, f"event:{user}-p{purchase}", NOW).idempotency_key
    return catalogue.item_id("SEVEN", key, 0)


def batch() -> list[Purchase | Interaction]:
    """Interleaved customers, as a consumer batch brings them."""
    events: list[Purchase | Interaction] = []
    for i in range(8):
        user = f"b{i}"
        events += [buy(user, 0, ts=NOW - DAY_MS), buy(user, 1)]  # the first purchase, then another
    events.append(buy("b0", 1))  # a duplicate within the batch
    # A coupon granted earlier in this batch, redeemed twice: the second is rejected.
    events += [buy("b1", 2, coupons=(coupon_of("b1", 0),)), buy("b1", 3, coupons=(coupon_of("b1", 0), "NOPE"))]
    # Step-ups: invites 1, 2 (twice: counted once), 3, 4; the held coupon is cancelled each time.
    events += [accept("r0", 1), accept("r0", 2), accept("r0", 2), buy("r0", 0, coupons=("NOPE",)),
               accept("r0", 3), accept("r0", 4), accept("r1", 1)]
    return events


def feed(client: redis.Redis, events: list[Purchase | Interaction]) -> None:
    """Apply the events to the state store first, as the worker does before its stages."""
    store = StateStore(client, load_config().state.retention_days)
    for offset, event in enumerate(events):
        store.apply({(event.user_id, "touch.x:0"): [encode_event(event, int(event.ts), offset)]})


def everything(client: redis.Redis, users: list[str]) -> dict[str, Any]:
    """What a user of the engine can see: every outbox record in order, item statuses,
    per-rule counts, campaigns."""
    seen: dict[str, Any] = {}
    for user in users:
        keys = RewardKeys.of(user)
        seen[user] = (client.lrange(keys.outbox, 0, -1), client.hgetall(keys.status), client.hgetall(keys.counts))
    for campaign in CONFIG.campaigns:
        seen[campaign] = client.hgetall(CampaignKeys.of(campaign).hash)
    return seen


def run_both(url: str, events: list[Any]) -> tuple[Any, Any, list[str]]:
    """(what one event at a time left, what the whole batch at once left, the records it returned)."""
    client = connect(url)
    users = sorted({e.user_id for e in events})
    results = []
    for whole in (False, True):
        client.flushdb()
        feed(client, events)
        engine = engine_for(url, CONFIG)
        if whole:
            written = engine.on_events([(e, int(e.ts)) for e in events], NOW)
        else:
            written = [r for e in events for r in engine.on_event(e, int(e.ts), NOW)]
        results.append((everything(client, users), [r.record_id for r in written]))
        validate_outbox(engine)
    (single, single_ids), (whole_seen, whole_ids) = results
    assert whole_ids == single_ids
    return single, whole_seen, whole_ids


def test_a_batch_writes_exactly_what_one_event_at_a_time_writes(redis_url: str) -> None:
    single, whole, ids = run_both(redis_url, batch())
    assert whole == single
    spent = int(whole["shop"]["spent"])
    assert spent <= BUDGET and int(whole["shop"]["denied:budget"]) > 0  # ran out mid-batch
    assert ids.count(f"grant:{GrantIntent('first', 'shop', 'welcome', 'b0', 'event:b0-p0', 0).idempotency_key}") == 1
    outbox_b1 = [msgspec.json.decode(r) for r in whole["b1"][0]]
    redemptions = [(r["kind"], r.get("reason")) for r in outbox_b1 if r["kind"].startswith("redemption")]
    assert redemptions == [("redemption", None), ("redemption_rejected", "coupon_redeemed"),
                           ("redemption_rejected", "unknown_coupon")]
    steps = [msgspec.json.decode(r) for r in whole["r0"][0]]
    assert [r["kind"] for r in steps if r["prize"] == "ref"] == [
        "grant", "cancellation", "grant", "cancellation", "grant"]  # steps 1, 2, 3 (4 invites)
    referral_coupons = {item: status for item, status in whole["r0"][1].items() if item.startswith("REF-")}
    assert sorted(referral_coupons.values()) == ["active", "cancelled", "cancelled"]
    assert whole["r0"][2] == {"envelopes": "3", "steps": "1"}  # the envelope limit held


def test_a_replayed_batch_writes_nothing(redis_url: str) -> None:
    client = connect(redis_url)
    events = batch()
    feed(client, events)
    engine = engine_for(redis_url, CONFIG)
    first = engine.on_events([(e, int(e.ts)) for e in events], NOW)
    users = sorted({e.user_id for e in events})
    before = everything(client, users)
    assert first and engine.on_events([(e, int(e.ts)) for e in events], NOW) == []
    after = everything(client, users)
    # Grants refused for the budget are asked again, and counted as refused again.
    assert after.pop("shop").pop("denied:budget") == str(2 * int(before.pop("shop").pop("denied:budget")))
    assert after == before


def test_tier_changes_in_one_batch_grant_as_one_at_a_time(redis_url: str) -> None:
    """Two versions per user (the rule grants once per user) and a repeated change."""
    changes = [upgrade(f"t{i}", version) for i in range(30) for version in (1, 2)] + [upgrade("t0", 1)]
    client = connect(redis_url)
    engine = engine_for(redis_url)
    one_at_a_time = [r.record_id for c in changes for r in engine.on_tier_change(c, NOW)]
    campaign = client.hgetall(CampaignKeys.of("vip_upgrade").hash)
    client.flushdb()
    batched = engine_for(redis_url).on_tier_changes([msgspec.convert(c, TierChange) for c in changes], NOW)
    assert [r.record_id for r in batched] == one_at_a_time
    assert client.hgetall(CampaignKeys.of("vip_upgrade").hash) == campaign
    assert len(one_at_a_time) == 30 and client.hlen(CampaignKeys.of("vip_upgrade").reservations) == 30


def test_a_batch_costs_a_few_round_trips_whatever_its_size(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = connect(redis_url)
    events: list[Event] = [buy(f"n{i}", 0) for i in range(400)] + [accept(f"n{i}", 1) for i in range(100)]
    feed(client, events)
    engine = engine_for(redis_url)
    engine.ledger.client.ping()  # the connection is open before counting
    trips: list[int] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        trips.append(1)
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    written = engine.on_events([(e, int(e.ts)) for e in events], NOW)
    assert len({r.user_id for r in written}) == 400  # first purchase points, referral coupons and envelopes
    # First purchases; read, reserve, write, settle; the points lots each order earned (for its refunds).
    assert len(trips) == 6


def test_points_expire_in_bounded_slices_each_lot_once(redis_url: str) -> None:
    engine = engine_for(redis_url)
    users = [f"x{i}" for i in range(25)]
    engine.on_tier_changes([msgspec.convert(upgrade(u), TierChange) for u in users], NOW)  # 2000 points each
    later = NOW + 366 * DAY_MS
    slices = []
    while expired := engine.expire_points(later, 10):
        slices.append(expired)
    assert [len(s) for s in slices] == [10, 10, 5]
    assert sorted(r.user_id for s in slices for r in s) == sorted(users)
    assert all(r.points_delta == -2000 for s in slices for r in s)
    assert engine.expire_points(later, 10) == [] and engine.ledger.due_expiries(later, 10) == []


def test_scripts_redis_lost_are_loaded_again(redis_url: str) -> None:
    """A Redis restart empties its script cache: the batch runs all the same, once."""
    ledger = engine_for(redis_url, CONFIG).ledger
    # A script Redis has never seen stands in for one it lost (no global SCRIPT FLUSH).
    unseen = Script(ledger.client, f"{ledger._grant.script}\n-- {uuid.uuid4()}")
    ledger._grant, ledger._scripts = unseen, (*ledger._scripts, unseen)
    assert ledger.client.script_exists(unseen.sha) == [False]
    intent = GrantIntent("coupon", "shop", "seven", "lost", "event:lost-p0", NOW)
    items = catalogue.issue("seven", CONFIG.prizes, granting.issue_context(CONFIG, intent), {})
    call = GrantCall("lost", intent.idempotency_key, "coupon", 2, [granting.grant_record(CONFIG, intent, items, 700,
                                                                                          NOW)], items)
    assert ledger.write_all([call]) == [("granted", None)]
    assert ledger.write_all([call])[0][0] == "duplicate"
    assert ledger.client.llen(RewardKeys.of("lost").outbox) == 1
