"""The publisher's acknowledgement of a customer's two outboxes (pipeline/outboxes.py)
against a real Redis: it drops what was sent and only that, however often it runs and
whatever was written or acknowledged in between, and says what is left."""

from __future__ import annotations

import orjson

from tierflow.pipeline.outboxes import Outboxes
from tierflow.pipeline.rewards.ledger import OUTBOX_INDEX, Ledger, RewardKeys
from tierflow.pipeline.state.store import connect
from tierflow.pipeline.tiering.keys import Shards, TierKeys
from tierflow.pipeline.tiering.outbox import ChangeOutbox


def change(user: str, seq: int) -> bytes:
    return orjson.dumps({"user_id": user, "dimension": "segment", "old": None, "new": f"s{seq}", "version": seq,
                         "seq": seq, "reason": "event", "scores": {"r": None, "f": None, "m": None}, "points": 0,
                         "repurchases": 0, "why": None,
                         "event_time": "2026-01-01T00:00:00Z"})


def test_a_second_acknowledgement_drops_nothing_sent_after_the_first(redis_url: str) -> None:
    client = connect(redis_url)
    shards = Shards.of(4)
    changes = ChangeOutbox(client, shards)
    outboxes = Outboxes(client, changes, Ledger(client))
    tier, rewards = TierKeys.of("u1").outbox, RewardKeys.of("u1").outbox
    client.rpush(tier, change("u1", 1), change("u1", 2))
    client.rpush(rewards, '{"record_id":"r1"}')
    client.zadd(shards.holding("u1").outbox, {"u1": 2})
    client.sadd(OUTBOX_INDEX, "u1")
    read = outboxes.read(["u1"])
    assert [c.seq for c in read.changes()] == [1, 2] and read.users["u1"].rewards == ['{"record_id":"r1"}']

    client.rpush(tier, change("u1", 3))  # written after the read: not sent, stays
    assert outboxes.ack(read, ["u1"]) == {"u1"}
    assert [orjson.loads(r)["seq"] for r in client.lrange(tier, 0, -1)] == [3]
    assert client.llen(rewards) == 0 and not client.sismember(OUTBOX_INDEX, "u1")
    assert client.zscore(shards.holding("u1").outbox, "u1") == 2  # a change is left: still listed

    client.rpush(rewards, '{"record_id":"r2"}')
    assert outboxes.ack(read, ["u1"]) == {"u1"}  # again (a lane's old owner, a read-back): drops nothing new
    assert [orjson.loads(r)["seq"] for r in client.lrange(tier, 0, -1)] == [3]
    assert client.lrange(rewards, 0, -1) == ['{"record_id":"r2"}']

    client.delete(rewards)
    assert outboxes.ack(outboxes.read(["u1"]), ["u1"]) == set()  # the next round sends seq 3: all gone
    assert client.llen(tier) == 0 and client.zscore(shards.holding("u1").outbox, "u1") is None
    client.close()
