"""End to end on real Kafka and Redis: the state the stream builds equals a
batch recomputation over the same events, with duplicates, shuffled arrival,
a kill -9 mid-stream, and bad input mixed in."""

from __future__ import annotations

import base64
import time
from dataclasses import replace
from pathlib import Path

import orjson
from confluent_kafka import Producer

from tests.fixtures import truth
from tests.fixtures.checks import WINDOWS, assert_state_matches
from tests.fixtures.worker import (
    cli,
    population_events,
    read_all,
    running_worker,
    send_events,
    wait_part_way,
    wait_processed,
)
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.kafka import lag
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.state.summary import DAY_MS, summarize


def test_stream_equals_batch(settings: Settings, tmp_path: Path) -> None:
    events, now_ms = population_events(users=3000, days=210, seed=11, duplicate_share=0.05)
    assert len(events) >= 100_000
    days = {truth.ts_ms(e["ts"]) // DAY_MS for e in events}
    assert max(days) - min(days) >= 200
    half = len(events) // 2
    with running_worker(settings, tmp_path) as worker:
        # Half as single-event records, half as per-user batch records: both are the contract.
        send_events(settings, events[:half], batch=1)
        send_events(settings, events[half:], batch=20)
        done = cli(settings, "lag", "--wait", "--timeout", "600", timeout=660)
        assert done.returncode == 0, done.stderr.decode() + worker.log_tail()
        assert worker.alive
    as_of_times = [now_ms, now_ms - 45 * DAY_MS, now_ms - 120 * DAY_MS, now_ms - 200 * DAY_MS]
    assert_state_matches(settings, events, as_of_times)

    # The CLI reports the same numbers for a user with purchases.
    expected = truth.user_truth(events, now_ms - 45 * DAY_MS, WINDOWS)
    buyer = next(u for u, s in sorted(expected.items()) if s["frequency"]["lifetime"] >= 3)
    as_of_text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((now_ms - 45 * DAY_MS) / 1000))
    shown = cli(settings, "user", buyer, "--json", "--as-of", as_of_text)
    assert shown.returncode == 0, shown.stderr.decode()
    doc = orjson.loads(shown.stdout)
    want = truth.user_truth(events, truth.ts_ms(as_of_text), WINDOWS)[buyer]
    assert doc["frequency"] == want["frequency"]
    assert doc["monetary"] == want["monetary"]
    assert doc["recency_days"] == want["recency_days"]


def test_unknown_user_is_a_clear_error(settings: Settings) -> None:
    shown = cli(settings, "user", "nobody-here", "--json")
    assert shown.returncode == 4
    assert "unknown user" in shown.stderr.decode()


def test_kill_9_mid_stream_then_restart(settings: Settings, tmp_path: Path) -> None:
    events, now_ms = population_events(users=1500, days=120, seed=23, duplicate_share=0.05)
    send_events(settings, events, batch=1)
    total = sum(r.lag for r in lag.measure(settings))
    with running_worker(settings, tmp_path) as worker:
        wait_part_way(settings, worker, total)  # kill once it is visibly part-way through
        worker.kill9()
        assert sum(r.lag for r in lag.measure(settings)) > 0
        worker.start()
        wait_processed(settings, worker)
    assert_state_matches(settings, events, [now_ms, now_ms - 60 * DAY_MS])


def _good(i: int, user: str, now_ms: int) -> dict:
    return {"event_id": f"good-{i}", "type": "purchase", "user_id": user, "ts": now_ms - i * 1000,
            "channel": "app", "order_id": f"o-{i}", "amount": 10.5, "currency": "CNY",
            "items": [{"sku": "SN001", "category": "snacks", "qty": 1, "price": 10.5}]}


def test_bad_input_goes_to_the_dead_letter_topic(settings: Settings, tmp_path: Path) -> None:
    config = tmp_path / "tierflow.toml"
    config.write_text("[ingest]\nmax_record_bytes = 65536\n")
    settings = replace(settings, config_path=config)
    now_ms = int(time.time() * 1000)
    good = _good(1, "alice", now_ms)
    bad_records: list[tuple[str, bytes | None, bytes]] = [
        ("not_json", b"alice", b"{this is not json"),
        ("bad_encoding", b"alice", b'{"event_id": "\xff\xfe"}'),
        ("too_large", b"alice", b'{"pad": "' + b"x" * 70_000 + b'"}'),
        ("unknown_type", b"alice", orjson.dumps({**good, "event_id": "b1", "type": "teleport"})),
        ("negative_amount", b"alice", orjson.dumps({**good, "event_id": "b2", "amount": -3})),
        ("ts_out_of_range", b"alice", orjson.dumps({**good, "event_id": "b3", "ts": "1999-12-31T23:00:00Z"})),
        ("ts_out_of_range", b"alice", orjson.dumps({**good, "event_id": "b4", "ts": now_ms + 10 * DAY_MS})),
        ("schema:currency", b"alice", orjson.dumps({**good, "event_id": "b5", "currency": "yuan"})),
        ("schema:items[0].qty", b"alice", orjson.dumps(
            {**good, "event_id": "b6", "items": [{"sku": "x", "category": "c", "qty": 0, "price": 1}]})),
        ("schema:order_id", b"alice", orjson.dumps({k: v for k, v in good.items() if k != "order_id"})),
        ("key_mismatch", b"mallory", orjson.dumps({**good, "event_id": "b7"})),
        ("not_an_event", b"alice", b"[1, 2, 3]"),
    ]
    # A batch with one bad event keeps its good events.
    batch = {"events": [_good(2, "alice", now_ms), {**_good(3, "alice", now_ms), "amount": -1},
                        _good(4, "alice", now_ms)]}
    producer = Producer(settings.kafka.confluent())
    with running_worker(settings, tmp_path) as worker:
        topic = settings.topics.input("purchase")
        producer.produce(topic, key=b"alice", value=orjson.dumps(good))
        for _, key, value in bad_records:
            producer.produce(topic, key=key, value=value)
        producer.produce(topic, key=b"alice", value=orjson.dumps(batch))
        assert producer.flush(30) == 0
        wait_processed(settings, worker)
        assert worker.alive

        # Still running: a later good event is applied.
        producer.produce(topic, key=b"bob", value=orjson.dumps(_good(5, "bob", now_ms)))
        assert producer.flush(30) == 0
        wait_processed(settings, worker)

    dead = read_all(settings, settings.topics.dlq, expected=len(bad_records) + 1)
    reasons = sorted(d["reason"] for d in dead)
    assert reasons == sorted([r for r, _, _ in bad_records] + ["negative_amount"])
    for record in dead:
        assert record["source"]["topic"] == settings.topics.input("purchase")
        assert record["source"]["offset"] >= 0
        assert record["detail"]
    in_batch = [d for d in dead if d["event_index"] is not None]
    assert [d["event_index"] for d in in_batch] == [1]
    assert in_batch[0]["event"]["event_id"] == "good-3"
    not_json = next(d for d in dead if d["reason"] == "not_json")
    assert base64.b64decode(not_json["original_b64"]) == b"{this is not json"

    store = StateStore(connect(settings.redis_url), 400)
    alice = summarize("alice", store.read("alice"), now_ms, WINDOWS, 400)
    assert alice.frequency["lifetime"] == 3  # good-1, good-2, good-4
    assert store.read("bob") is not None
    assert store.read("mallory") is None
