"""A poison corpus against the real worker process: every kind of bad input the
pipeline has met or can imagine, interleaved with valid events and sent at full
speed. Every bad record (or bad event of a batch) is dead-lettered with its
reason, the valid events' state equals the batch truth, and the worker is still
consuming at the end."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import orjson
import redis
from confluent_kafka import Producer

from tests.fixtures.checks import assert_state_matches
from tests.fixtures.worker import population_events, read_all, running_worker, wait_processed
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.state.summary import DAY_MS, UserKeys
from tierflow.schemas.events import TOPIC_OF

CONFIG = """
[ingest]
max_record_bytes = 262144
dead_letter_max_bytes = 200000
"""
MAX_KEY_BYTES = 128 * 4  # ingest.max_id_length in UTF-8


def purchase(user: str, event_id: str, now_ms: int, **changes: object) -> dict:
    return {"event_id": event_id, "type": "purchase", "user_id": user, "ts": now_ms - 60_000, "channel": "app",
            "order_id": f"o-{event_id}", "amount": 10.5, "currency": "CNY",
            "items": [{"sku": "SN001", "category": "snacks", "qty": 1, "price": 10.5}], **changes}


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


class Corpus:
    """Bad records, each under its own key (= its user), with the reasons expected for it
    (event_index: None for the whole record), and the valid events some of them carry."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.records: list[tuple[str, bytes | None, bytes | None]] = []
        self.expected: dict[str | None, list[tuple[str, int | None]]] = defaultdict(list)
        self.valid: list[dict] = []
        self.kinds: list[str] = []

    def bad(self, kind: str, reasons: list[tuple[str, int | None]], value: bytes | None,
            key: bytes | None = None, topic: str = "purchase", keyed: bool = True) -> None:
        key = self.next_key().encode() if key is None and keyed else key
        self.kinds.append(kind)
        self.records.append((topic, key, value))
        shown = None if key is None else key[:MAX_KEY_BYTES].decode("utf-8", "replace")
        self.expected[shown] += reasons

    def event(self, key: str, **changes: object) -> dict:
        return {**purchase(key, f"{key}-{len(self.valid)}-{len(self.kinds)}", self.now_ms), **changes}

    def next_key(self) -> str:
        return f"bad-{len(self.kinds)}"

    def one(self, kind: str, reason: str, changes: dict | None = None, raw: bytes | None = None,
            topic: str = "purchase", drop: str | None = None) -> None:
        """A single-event record: a valid event with `changes`, or `raw` bytes."""
        if raw is None:
            event = self.event(self.next_key(), **(changes or {}))
            if drop:
                del event[drop]
            raw = orjson.dumps(event)
        self.bad(kind, [(reason, None)], raw, topic=topic)


def build_corpus(now_ms: int) -> Corpus:
    c = Corpus(now_ms)
    good = orjson.dumps(c.event("template"))
    # Not JSON, or not text.
    c.one("malformed JSON", "not_json", raw=b"{this is not json")
    c.one("truncated JSON", "not_json", raw=good[:-7])
    c.one("empty value", "not_json", raw=b"")
    c.bad("tombstone (null value)", [("not_json", None)], None)
    c.one("NaN literal", "not_json", raw=good.replace(b'"amount":10.5', b'"amount":NaN'))
    c.one("Infinity literal", "not_json", raw=good.replace(b'"amount":10.5', b'"amount":Infinity'))
    c.one("number beyond double range", "not_json", raw=good.replace(b'"amount":10.5', b'"amount":1e400'))
    c.one("invalid UTF-8 value", "bad_encoding", raw=b'{"event_id": "\xff\xfe"}')
    c.bad("invalid UTF-8 key", [("bad_encoding", None)], good, key=b"bad-\xc3\x28")
    # Size and shape.
    c.one("record over max_record_bytes", "too_large", raw=b'{"pad": "' + b"x" * 270_000 + b'"}')
    c.one("batch over max_batch_events", "too_large",
          raw=orjson.dumps({"events": [{"type": "x"}] * 1001}))
    c.one("50,000 nested arrays", "too_deep", raw=deep(50_000))
    c.one("30,000 nested objects", "too_deep", raw=b'{"a":' * 30_000 + b"1" + b"}" * 30_000)
    key = c.next_key()
    c.one("deep unknown field in a valid event", "too_deep",
          raw=orjson.dumps(c.event(key))[:-1] + b',"x":' + deep(5_000) + b"}")
    c.one("unclosed nesting", "too_deep", raw=b"[" * 60_000)
    c.one("JSON array", "not_an_event", raw=b"[1, 2, 3]")
    c.one("JSON string", "not_an_event", raw=b'"hello"')
    c.one("JSON number", "not_an_event", raw=b"42")
    c.one("unknown type", "unknown_type", {"type": "teleport"})
    c.one("missing type", "unknown_type", drop="type")
    # Money and quantities.
    c.one("negative amount", "negative_amount", {"amount": -3})
    c.one("negative price", "negative_amount",
          {"items": [{"sku": "S", "category": "c", "qty": 1, "price": -1}]})
    c.one("amount 1e17 (wrapped the lifetime total)", "amount_out_of_range", {"amount": 1e17})
    c.one("amount 1e300 (TypeError)", "amount_out_of_range", {"amount": 1e300})
    c.one("order line qty x price over the ceiling", "amount_out_of_range",
          {"items": [{"sku": "S", "category": "c", "qty": 1_000_000, "price": 1e6}]})
    c.one("quantity 2**63", "quantity_out_of_range",
          {"items": [{"sku": "S", "category": "c", "qty": 2**63, "price": 1}]})
    cart = {"type": "cart", "action": "add", "sku": "S", "category": "c", "qty": 10**7, "price": 1}
    c.one("cart quantity over the limit", "quantity_out_of_range", cart, topic="cart")
    c.one("price 1e12", "price_out_of_range",
          {"items": [{"sku": "S", "category": "c", "qty": 1, "price": 1e12}]})
    c.one("amount as a string", "schema:amount", {"amount": "10"})
    c.one("amount as a boolean", "schema:amount", {"amount": True})
    # Strings and counts.
    c.one("event_id of 10,000 characters", "string_too_long", {"event_id": "e" * 10_000})
    c.one("huge string (190 KB category)", "string_too_long",
          {"items": [{"sku": "S", "category": "c" * 190_000, "qty": 1, "price": 1}]})
    c.one("501 order lines", "too_many_items",
          {"items": [{"sku": "S", "category": "c", "qty": 1, "price": 0.01}] * 501, "amount": 5.01})
    c.one("51 coupons", "too_many_items", {"coupons": [f"C{i}" for i in range(51)]})
    # Time.
    c.one("ts before min_ts", "ts_out_of_range", {"ts": "1999-12-31T23:00:00Z"})
    c.one("ts ten days ahead", "ts_out_of_range", {"ts": now_ms + 10 * DAY_MS})
    c.one("ts 2**63-1", "ts_out_of_range", {"ts": 2**63 - 1})
    c.one("ts not a time", "schema:ts", {"ts": "yesterday"})
    c.one("ts without offset", "schema:ts", {"ts": "2026-01-01T00:00:00"})
    # Contract fields.
    c.one("missing order_id", "schema:order_id", drop="order_id")
    c.one("null user_id", "schema:user_id", {"user_id": None})
    c.one("bad currency", "schema:currency", {"currency": "yuan"})
    c.one("zero quantity", "schema:items[0].qty", {"items": [{"sku": "S", "category": "c", "qty": 0, "price": 1}]})
    c.one("bad enum (interaction kind)", "schema:kind", {"type": "interaction", "kind": "teleport"},
          topic="interaction")
    c.one("bad enum (cart action)", "schema:action", {**cart, "action": "wishlist", "qty": 1}, topic="cart")
    c.one("browse naming nothing", "schema:page", {"type": "browse"}, topic="browse")
    c.one("empty batch", "schema:events", raw=b'{"events": []}')
    c.one("events not a list", "schema:events", raw=b'{"events": {"a": 1}}')
    # Keys and users.
    c.bad("key of another user", [("key_mismatch", None)], orjson.dumps(c.event("alice-poison")),
          key=b"mallory")
    c.bad("key no user can have (200 KB)", [("key_mismatch", None)], orjson.dumps(c.event("bob-poison")),
          key=b"k" * 200_000)
    key = c.next_key()
    others = [purchase("carol-poison", f"{key}-c", now_ms), purchase("dave-poison", f"{key}-d", now_ms)]
    c.bad("batch of other users", [("key_mismatch", 0), ("key_mismatch", 1)], orjson.dumps({"events": others}))
    first, second = c.event("erin-poison"), purchase("frank-poison", "null-key-frank", now_ms)
    c.valid.append(first)
    c.bad("null key: batch of two users", [("key_mismatch", 1)], orjson.dumps({"events": [first, second]}),
          keyed=False)
    # Bad events beside good ones in one batch: the good ones are applied.
    key = c.next_key()
    siblings = [c.event(key), c.event(key, amount=1e17), c.event(key), c.event(key, channel="c" * 65)]
    c.valid += [siblings[0], siblings[2]]
    c.bad("batch with bad siblings", [("amount_out_of_range", 1), ("string_too_long", 3)],
          orjson.dumps({"events": siblings}))
    return c


def test_poison_corpus_is_dead_lettered_and_the_worker_goes_on(settings: Settings, tmp_path: Path) -> None:
    config = tmp_path / "tierflow.toml"
    config.write_text(CONFIG)
    settings = replace(settings, config_path=config)
    events, now_ms = population_events(users=150, days=40, seed=41, duplicate_share=0.02)
    corpus = build_corpus(now_ms)

    # An id sent again with other content (after the original, on its partition).
    original = next(e for e in events if e["type"] == "purchase")
    conflict = {**original, "amount": original["amount"] + 1}
    corpus.expected[original["user_id"]].append(("conflicting_duplicate", None))
    corpus.kinds.append("event id again with other content")
    # State damaged outside tierflow: applying this customer raises inside Redis.
    client = redis.Redis.from_url(settings.redis_url)
    client.set(UserKeys.of("damaged").seen, "not a hash")
    corpus.bad("a record the store raises on", [("internal_error", None)],
               orjson.dumps(purchase("damaged", "damaged-1", now_ms)), key=b"damaged")
    assert len(corpus.kinds) >= 40

    stream = [(TOPIC_OF[str(e["type"])], e["user_id"].encode(), orjson.dumps(e)) for e in events] + corpus.records
    random.Random(41).shuffle(stream)
    stream.append(("purchase", original["user_id"].encode(), orjson.dumps(conflict)))
    producer = Producer(settings.kafka.confluent(**{"linger.ms": 20, "enable.idempotence": True}))
    with running_worker(settings, tmp_path) as worker:
        for topic, key, value in stream:
            while True:
                try:
                    producer.produce(settings.topics.input(topic), key=key, value=value)
                    break
                except BufferError:
                    producer.poll(0.1)
        assert producer.flush(60) == 0
        wait_processed(settings, worker)
        # Still consuming: a later event is applied.
        producer.produce(settings.topics.input("purchase"), key=b"late-user",
                         value=orjson.dumps(purchase("late-user", "late-1", now_ms)))
        assert producer.flush(30) == 0
        wait_processed(settings, worker)
        assert worker.alive

    expected_count = sum(len(reasons) for reasons in corpus.expected.values())
    letters = read_all(settings, settings.topics.dlq, expected=expected_count)
    got: dict[str | None, list[tuple[str, int | None]]] = defaultdict(list)
    for letter in letters:
        got[letter["source"]["key"]].append((letter["reason"], letter["event_index"]))
        assert letter["detail"]
    assert {k: sorted(v, key=str) for k, v in got.items()} == {
        k: sorted(v, key=str) for k, v in corpus.expected.items()}

    batch_truth = events + corpus.valid + [purchase("late-user", "late-1", now_ms)]
    assert_state_matches(settings, batch_truth, [now_ms, now_ms - 20 * DAY_MS])
    assert StateStore(connect(settings.redis_url), 400).read("damaged") is None
