"""The ingest loop on real Kafka and Redis: a record that makes the worker raise is
set aside as internal_error and its batch applied without it, and so are the
events of a customer the tier or reward stage raises for; an event id that comes
back with other content is dead-lettered; an outage fails the batch whole,
dead-lettering nothing, so the supervisor retries it."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
import redis
from confluent_kafka import Message

from tests.fixtures.worker import read_to_end
from tierflow.agents import ingest
from tierflow.agents.clock import Clock
from tierflow.agents.ingest import IngestLoop
from tierflow.agents.rewards import RewardStage
from tierflow.agents.tiers import TierStage
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.ingest.validate import Limits, Rejection, ValidEvent
from tierflow.pipeline.kafka.publisher import Publisher
from tierflow.pipeline.kafka.topics import ensure_topics
from tierflow.pipeline.rewards.ledger import RewardKeys
from tierflow.pipeline.state.store import USERS_KEY, StateStore, connect
from tierflow.pipeline.state.summary import UserKeys
from tierflow.pipeline.tiering.keys import TierKeys

NOW_MS = 1_795_000_000_000


def sign_in(user: str, event_id: str, **changes: object) -> bytes:
    return orjson.dumps({"event_id": event_id, "type": "interaction", "user_id": user, "ts": NOW_MS - 1000,
                         "channel": "app", "kind": "sign_in", **changes})


def first_purchase(user: str, event_id: str) -> bytes:
    """A purchase that moves the customer's lifecycle and earns the default first-purchase points."""
    return orjson.dumps({"event_id": event_id, "type": "purchase", "user_id": user, "ts": NOW_MS - 1000,
                         "channel": "app", "order_id": f"o-{event_id}", "amount": 20.0, "currency": "CNY",
                         "items": [{"sku": "SN001", "category": "snacks", "qty": 1, "price": 20.0}]})


@pytest.fixture
def loop(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[IngestLoop]:
    ensure_topics(settings)
    monkeypatch.setattr(ingest, "wall_ms", lambda: NOW_MS)
    publisher = Publisher(settings.kafka, timeout_s=30)
    loop = IngestLoop(Context(settings, load_config()), StateStore(connect(settings.redis_url), 400), publisher)
    yield loop
    loop.consumer.close()
    publisher.close()


def batch_of(loop: IngestLoop, settings: Settings, records: list[tuple[bytes, bytes]]) -> list[Message]:
    """The records, sent to one partition in order, as the loop's consumer reads them."""
    topic = settings.topics.input("interaction")
    delivery = loop.publisher.delivery()
    for key, value in records:
        delivery.send(topic, key, value)
    delivery.wait()
    loop.consumer.subscribe([topic])
    messages: list[Message] = []
    while len(messages) < len(records):
        messages += [m for m in loop.consumer.consume(len(records), 10) if m.error() is None]
    return messages


def reasons(settings: Settings) -> list[tuple[str, str | None, str]]:
    return sorted((d["reason"], d["source"]["key"], d["detail"]) for d in read_to_end(settings, settings.topics.dlq))


def test_a_record_the_store_chokes_on_is_set_aside_and_its_batch_applied(
    loop: IngestLoop, settings: Settings
) -> None:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.set(UserKeys.of("broken").seen, "not a hash")  # state damaged outside tierflow
    records = [(f"u{i}".encode(), sign_in(f"u{i}", f"e{i}")) for i in range(6)]
    records.insert(3, (b"broken", sign_in("broken", "b1")))
    batch = loop.process(batch_of(loop, settings, records))
    assert sorted(item.event.user_id for item in batch.events) == [f"u{i}" for i in range(6)]
    assert all(client.hget(UserKeys.of(f"u{i}").profile, "ni") == "1" for i in range(6))
    assert client.smembers(USERS_KEY) == {f"u{i}" for i in range(6)}
    [(reason, key, detail)] = reasons(settings)
    assert (reason, key) == ("internal_error", "broken")
    assert detail.startswith("ResponseError #") and "WRONGTYPE" not in detail


def test_a_record_the_decoder_raises_on_is_set_aside(
    loop: IngestLoop, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the 50,000-deep record once did: whatever the bug, one record pays for it."""
    parse = ingest.parse_record

    def parse_or_raise(
        value: bytes | None, key: bytes | None, limits: Limits, now_ms: int
    ) -> tuple[list[ValidEvent], list[Rejection]]:
        if value is not None and b"poison" in value:
            raise RecursionError("maximum recursion depth exceeded")
        return parse(value, key, limits, now_ms)

    monkeypatch.setattr(ingest, "parse_record", parse_or_raise)
    records = [(b"u1", sign_in("u1", "e1")), (b"u2", sign_in("u2", "poison")), (b"u3", sign_in("u3", "e3"))]
    batch = loop.process(batch_of(loop, settings, records))
    assert sorted(item.event.event_id for item in batch.events) == ["e1", "e3"]
    [(reason, key, detail)] = reasons(settings)
    assert (reason, key) == ("internal_error", "u2")
    assert detail.startswith("RecursionError #")


def test_an_id_again_with_other_content_is_dead_lettered_and_changes_nothing(
    loop: IngestLoop, settings: Settings
) -> None:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    first = loop.process(batch_of(loop, settings, [(b"u1", sign_in("u1", "e1"))]))
    assert first.applied == 1
    before = client.hgetall(UserKeys.of("u1").profile)
    again = [(b"u1", sign_in("u1", "e1")), (b"u1", sign_in("u1", "e1", kind="share"))]
    batch = loop.process(batch_of(loop, settings, again))
    assert batch.applied == 0
    assert [item.event.kind for item in batch.events] == ["sign_in"]  # the resend; stages are idempotent
    assert client.hgetall(UserKeys.of("u1").profile) == before
    [letter] = read_to_end(settings, settings.topics.dlq)
    assert letter["reason"] == "conflicting_duplicate"
    assert letter["event"]["kind"] == "share" and letter["event_index"] is None


def test_an_outage_fails_the_batch_and_dead_letters_nothing(loop: IngestLoop, settings: Settings) -> None:
    messages = batch_of(loop, settings, [(b"u1", sign_in("u1", "e1")), (b"u2", sign_in("u2", "e2"))])
    loop.store = StateStore(connect("redis://127.0.0.1:1/0"), 400)
    with pytest.raises(redis.ConnectionError):
        loop.process(messages)
    assert read_to_end(settings, settings.topics.dlq) == []


@pytest.mark.parametrize(("error", "outage"), [
    (redis.ConnectionError("refused"), True),
    (redis.ResponseError("Command # 1 (EVALSHA x) of pipeline caused error: OOM command not allowed"), True),
    (redis.ResponseError("READONLY You can't write against a read only replica."), True),
    (redis.ResponseError("Command # 2 (EVALSHA x) of pipeline caused error: WRONGTYPE Operation against"), False),
    (TypeError("Integer exceeds 64-bit range"), False),
])
def test_what_counts_as_an_outage(error: Exception, outage: bool) -> None:
    assert ingest.is_outage(error) is outage


# State damaged outside tierflow, each where one stage reads it: (key, field or None for the whole key, value).
DAMAGE = {
    "tiers": (TierKeys.of("broken").tier, "asof", "yesterday"),  # the tier stage cannot parse the instant
    "rewards": (RewardKeys.of("broken").grants, None, "not a hash"),  # the grant script meets the wrong type
}


@pytest.mark.parametrize("stage", sorted(DAMAGE))
def test_a_customer_a_stage_raises_for_is_dead_lettered_and_the_others_go_on(
    loop: IngestLoop, settings: Settings, stage: str
) -> None:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    written: set[str] = set()
    clock = Clock("event", client)
    tiers = TierStage(loop.ctx, client, clock, written.update)
    rewards = RewardStage(loop.ctx, client, clock, written.update)
    loop.stages = [tiers, rewards]
    key, field, value = DAMAGE[stage]
    if field is None:
        client.set(key, value)
    else:
        client.hset(key, field, value)
    healthy = [f"u{i}" for i in range(6)]
    records = [(user.encode(), first_purchase(user, f"{user}-p1")) for user in healthy]
    records.insert(3, (b"broken", first_purchase("broken", "broken-p1")))
    loop.process(batch_of(loop, settings, records))

    def tiered(user: str) -> bool:
        return client.hget(TierKeys.of(user).tier, "v:lifecycle") == "first_purchase"

    def rewarded(user: str) -> bool:
        return [g.prize for g in rewards.engine.ledger.grants(user)] == ["first_points"]

    assert all(tiered(user) and rewarded(user) for user in healthy)
    assert set(healthy) <= written
    [letter] = read_to_end(settings, settings.topics.dlq)
    assert (letter["reason"], letter["source"]["key"], letter["event"]["event_id"]) == (
        "internal_error", "broken", "broken-p1")
    assert letter["detail"].split(" #")[0] == {"tiers": "ValueError", "rewards": "ResponseError"}[stage]
    assert "yesterday" not in letter["detail"] and "WRONGTYPE" not in letter["detail"]
    # Left out of the stages after the one that raised: no reward, whatever the damage.
    assert client.hlen(RewardKeys.of("broken").items) == 0
    assert client.hget(UserKeys.of("broken").profile, "pc") == "1"  # the event stays counted in state
    # The partitions moved on: the whole batch's offsets are committed.
    committed = loop.consumer.committed(loop.consumer.assignment(), 10)
    assert sum(max(tp.offset, 0) for tp in committed) == len(records)

    # Repaired, the record sent again (as `tierflow dlq replay` does) is evaluated normally,
    # and counted once.
    client.delete(key)
    loop.process(batch_of(loop, settings, [(b"broken", first_purchase("broken", "broken-p1"))]))
    assert tiered("broken") and rewarded("broken")
    assert client.hget(UserKeys.of("broken").profile, "pc") == "1"
    assert len(read_to_end(settings, settings.topics.dlq)) == 1


def test_an_outage_in_a_stage_fails_the_batch_and_dead_letters_nothing(loop: IngestLoop, settings: Settings) -> None:
    down = connect("redis://127.0.0.1:1/0")
    loop.stages = [TierStage(loop.ctx, down, Clock("event", down), lambda _users: None)]
    messages = batch_of(loop, settings, [(b"u1", first_purchase("u1", "p1")), (b"u2", first_purchase("u2", "p2"))])
    with pytest.raises(redis.ConnectionError):
        loop.process(messages)
    assert read_to_end(settings, settings.topics.dlq) == []
    assert all(tp.offset < 0 for tp in loop.consumer.committed(loop.consumer.assignment(), 10))
