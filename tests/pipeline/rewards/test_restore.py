"""The reward ledger rebuilt from its records (`tierflow rebuild`): after every kind of
change the engine makes, folding the published records into an empty Redis gives
back, key by key, what the ledger scripts had written."""

from __future__ import annotations

import json
import random
from typing import Any

import redis

from tests.pipeline.rewards.test_ledger import NOW, accept, buy, engine_for, upgrade
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.rewards.catalogue import DAY_MS
from tierflow.pipeline.rewards.ledger import EXPIRY_INDEX
from tierflow.pipeline.rewards.restore import LedgerFold, write, write_campaigns
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.state.summary import encode as encode_event
from tierflow.schemas.events import Interaction
from tierflow.schemas.reward_grants import RewardRecord, decode, encode

# What the records do not carry (see pipeline/rewards/restore.py): invites, and the outbox,
# which holds only what is not published yet.
NOT_ON_THE_TOPIC = (":rw:i:", ":rw:o", "{rw}:outbox")
# Empty JSON arrays: Lua's cjson writes an empty table as {}.
EMPTY = ([], {})


def dump(client: redis.Redis) -> dict[str, Any]:
    """Every reward key with its value, comparable across writers."""
    out: dict[str, Any] = {}
    for key in sorted(k for pattern in ("*:rw:*", "{rw}*", "{rw:c:*") for k in client.scan_iter(match=pattern)):
        if any(part in key for part in NOT_ON_THE_TOPIC):
            continue
        kind = client.type(key)
        if kind == "hash":
            value: Any = client.hgetall(key)
            if key.endswith(":res"):  # reservations: the same JSON, whoever encoded it
                value = {k: {f: (None if x in EMPTY else x) for f, x in json.loads(v).items()}
                         for k, v in value.items()}
            if key.startswith("{rw:c:") and ":" not in key[len("{rw:c:"):].split("}", 1)[1]:
                value = {f: v for f, v in value.items() if not f.startswith("denied:")}  # refusals are not records
            if key.endswith(":rw:a"):  # the points each order earned, for its refunds: not on the topic
                value = {f: v for f, v in value.items() if not f.startswith(("o:", "c:"))}
                if not value:
                    continue
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = sorted(client.smembers(key))
        else:
            value = client.get(key)
        out[key] = value
    return out


def exercise(redis_url: str) -> list[RewardRecord]:
    """Every kind of record the engine writes; returns them in outbox (publication) order."""
    engine = engine_for(redis_url)
    store = StateStore(connect(redis_url), load_config().state.retention_days)
    for n in range(1, 6):  # referral: step-ups with cancellations, and envelopes
        engine.on_event(accept("ref", n), NOW, NOW)
    [coupon] = [c["item_id"] for c in engine.wallet("ref", NOW)["coupons"]  # type: ignore[index]
                if c["status"] == "active"]
    engine.on_event(buy("ref", 1, coupons=(coupon, "NOPE-1")), NOW, NOW)  # a redemption and a rejection
    engine.withdraw("ref", 1000, "w1", NOW + 8 * DAY_MS)
    engine.on_tier_change(upgrade("pts"), NOW)  # a gift pack with points and a third-party right
    engine.adjust_points("pts", 100, "goodwill", NOW, "complaint", expires_days=None)
    engine.adjust_points("pts", -50, "correction", NOW, "double count")
    engine.spend_points("pts", 500, "order-9", NOW + DAY_MS)
    engine.expire_points(NOW + 366 * DAY_MS, 10)
    for user in (f"new{i}" for i in range(7)):  # pool coupons
        engine.claim_code("NEW666", user, NOW)
    engine.claim_code("NEW666", "new0", NOW)  # already claimed
    join = Interaction(event_id="j1", user_id="g1", ts=NOW, channel="app", kind="campaign_join", target="x")
    engine.on_event(join, NOW, NOW)  # a physical prize that waits for an address
    engine.set_address("g1", "1 Harbour Rd", NOW)
    first = buy("fp", 1, ts=NOW - DAY_MS)
    store.apply({("fp", "touch.purchase:0"): [encode_event(first, NOW - DAY_MS, 0)]})
    engine.on_event(first, NOW - DAY_MS, NOW)  # first-purchase points, never spent
    win_back = {**upgrade("wb"), "dimension": "segment", "old": "important_value", "new": "important_win_back"}
    engine.on_tier_change(win_back, NOW)
    return engine.outbox(100_000).records


def test_folding_the_records_gives_back_every_reward_key(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    records = exercise(redis_url)
    assert {r.kind for r in records} == {"grant", "cancellation", "redemption", "redemption_rejected",
                                          "withdrawal", "points_adjust", "points_spend", "expiry", "fulfilment"}
    before = dump(client)

    client.flushdb()
    fold = LedgerFold(load_config().rewards)
    # Users' records interleave on a topic; each user's stay in order. Some are there twice.
    by_user: dict[str, list[RewardRecord]] = {}
    for record in records:
        by_user.setdefault(record.user_id, []).append(record)
    rng = random.Random(3)
    queues = [list(q) for q in by_user.values()]
    while queues:
        queue = rng.choice(queues)
        record = queue.pop(0)
        for _ in range(1 + (rng.random() < 0.2)):
            fold.add(decode(encode(record)))
        if not queue:
            queues.remove(queue)
    write(client, fold, list(fold.users))
    write_campaigns(client, fold)
    assert fold.records == len(records)
    assert dump(client) == before
    assert client.zrange(EXPIRY_INDEX, 0, -1) == sorted(["fp"])

    # Nothing is granted twice, and the pool hands out only coupons nobody holds.
    engine = engine_for(redis_url)
    assert engine.claim_code("NEW666", "new3", NOW).status == "already_claimed"
    assert engine.on_event(accept("ref", 5), NOW, NOW) == []
    taken = {i.item_id for r in records if r.prize == "new666" for i in r.items}
    fresh = engine.claim_code("NEW666", "newcomer", NOW).coupon
    assert fresh is not None and fresh.item_id not in taken
    assert engine.report(NOW)["campaigns"]["new_customer"]["spent_cents"] == 600 * 8  # type: ignore[index]
