"""`tierflow produce` routes JSONL events by type, keys them by user, batches them
on request, and reports what it could not route."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.fixtures.worker import cli
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.kafka.reader import read_topic


def event(i: int, kind: str, user: str) -> dict:
    body = {"browse": {"page": "home"}, "cart": {"action": "add", "sku": "S1", "category": "c", "qty": 1,
                                                  "price": 9.9}}.get(kind, {})
    return {"type": kind, "event_id": f"e{i}", "user_id": user, "ts": "2026-11-01T08:00:00Z",
            "channel": "app", **body}


def records(settings: Settings, kind: str) -> list[tuple[bytes, object]]:
    return [(msg.key(), orjson.loads(msg.value())) for msg in read_topic(settings, settings.topics.input(kind))]


def test_events_are_routed_by_type_and_keyed_by_user(tmp_path: Path, settings: Settings) -> None:
    events = [event(1, "browse", "u1"), event(2, "cart", "u2"), event(3, "browse", "u2"), event(4, "refund", "u2")]
    lines = [orjson.dumps(e) for e in events] + [b"", b"not json", b'{"type": "teleport", "user_id": "u9"}']
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = cli(settings, "produce", str(path))
    assert result.returncode == 3, result.stderr  # some lines could not be routed
    assert b"events 4  records 4  delivered 4  failed 0  skipped 2" in result.stdout
    assert b"line 6: skipped: not JSON" in result.stderr
    assert sorted(records(settings, "browse"), key=str) == sorted([(b"u1", events[0]), (b"u2", events[2])], key=str)
    assert records(settings, "cart") == [(b"u2", events[1])]
    # A refund travels with its order, on the purchase topic.
    assert records(settings, "purchase") == [(b"u2", events[3])]


def test_batch_groups_a_users_events_into_one_record(tmp_path: Path, settings: Settings) -> None:
    events = [event(i, "browse", "u1") for i in range(5)]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    result = cli(settings, "produce", str(path), "--batch", "2")
    assert result.returncode == 0, result.stderr
    got = records(settings, "browse")
    assert [len(value["events"]) if "events" in value else 1 for _, value in got] == [2, 2, 1]
    flattened = [e for _, value in got for e in value.get("events", [value])]
    assert flattened == events
