"""`tierflow dlq` lists what ingest dead-lettered, `dlq replay` sends the original
records back to their input topics, and `tierflow validate` gives the worker's
reasons offline."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import orjson

from tests.fixtures.worker import cli
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.ingest.deadletter import dead_letter
from tierflow.pipeline.ingest.validate import Limits, parse_record
from tierflow.pipeline.kafka.publisher import Publisher
from tierflow.pipeline.kafka.reader import read_topic
from tierflow.pipeline.kafka.topics import ensure_topics
from tierflow.schemas.dead_letters import DeadLetter, DeadLetterSource

GOOD = {"type": "browse", "event_id": "e-good", "user_id": "u1", "ts": "2026-11-01T08:00:00Z",
        "channel": "app", "page": "home"}
BAD_RECORDS: list[tuple[str, bytes, bytes]] = [
    ("cart", b"u2", b"{not json"),
    ("browse", b"u3", orjson.dumps({**GOOD, "user_id": "u3", "event_id": "e3", "ts": "yesterday"})),
    ("purchase", b"u4", orjson.dumps({"events": [
        {**GOOD, "user_id": "u4", "event_id": "e4a"},
        {**GOOD, "user_id": "u4", "event_id": "e4b", "type": "teleport"},
        {**GOOD, "user_id": "u4", "event_id": "e4c", "channel": ""},
    ]})),
]


def dead_letter_as_ingest_does(settings: Settings) -> list[str]:
    """Reject the bad records with ingest's own parser and write their dead letters
    exactly as the worker does; returns the reasons in order."""
    ensure_topics(settings)
    limits = Limits.of(load_config().ingest)
    now_ms = int(time.time() * 1000)
    delivery = Publisher(settings.kafka, timeout_s=30).delivery()
    reasons = []
    for offset, (kind, key, value) in enumerate(BAD_RECORDS):
        now_ms += 1  # one rejection time per record: the listing is oldest first
        _valid, rejected = parse_record(value, key, limits, now_ms)
        for rejection in rejected:
            reasons.append(rejection.reason)
            letter = dead_letter(rejection, topic=settings.topics.input(kind), partition=0, offset=offset,
                                 key=key, value=value, timestamp_ms=now_ms, now_ms=now_ms)
            delivery.send(settings.topics.dlq, key, letter)
    delivery.wait()
    return reasons


def test_dlq_lists_reasons_and_original_records_and_filters_them(settings: Settings) -> None:
    reasons = dead_letter_as_ingest_does(settings)
    assert reasons == ["not_json", "schema:ts", "unknown_type", "schema:channel"]

    listed = cli(settings, "dlq", "--json")
    assert listed.returncode == 0, listed.stderr
    letters = orjson.loads(listed.stdout)
    assert [letter["reason"] for letter in letters] == reasons
    assert letters[0]["original"] == "{not json"
    assert letters[2]["original"]["events"][1]["type"] == "teleport"
    assert [letter["event_index"] for letter in letters] == [None, None, 1, 2]

    schema_only = orjson.loads(cli(settings, "dlq", "--json", "--reason", "schema:").stdout)
    assert [letter["reason"] for letter in schema_only] == ["schema:ts", "schema:channel"]
    table = cli(settings, "dlq", "--reason", "not_json").stdout.decode()
    assert "not_json" in table and "{not json" in table and table.strip().endswith("1 dead letters (not_json 1)")
    assert orjson.loads(cli(settings, "dlq", "--json", "--since", "2999-01-01").stdout) == []


def test_replay_sends_each_original_record_once_to_its_input_topic(settings: Settings) -> None:
    dead_letter_as_ingest_does(settings)
    dry = cli(settings, "dlq", "replay")
    assert dry.returncode == 0 and b"3 records would be sent again" in dry.stdout

    sent = cli(settings, "dlq", "replay", "--yes")
    assert sent.returncode == 0, sent.stderr
    assert b"3 records sent again" in sent.stdout
    back = sorted(
        (msg.topic(), msg.key(), msg.value())
        for kind in ("cart", "browse", "purchase")
        for msg in read_topic(settings, settings.topics.input(kind))
    )
    assert back == sorted((settings.topics.input(kind), key, value) for kind, key, value in BAD_RECORDS)


def test_validate_reports_the_workers_reasons_per_line(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([orjson.dumps(GOOD), b"", *(value for _, _, value in BAD_RECORDS)]) + b"\n")
    result = cli(settings, "validate", str(path), "--json")
    assert result.returncode == 1
    report = orjson.loads(result.stdout)
    assert report["lines"] == 4 and report["valid_events"] == 2
    assert [(r["line"], r["reason"], r["event_index"]) for r in report["rejected"]] == [
        (3, "not_json", None), (4, "schema:ts", None), (5, "unknown_type", 1), (5, "schema:channel", 2)]

    good_only = tmp_path / "good.jsonl"
    good_only.write_bytes(orjson.dumps(GOOD) + b"\n")
    clean = cli(settings, "validate", str(good_only))
    assert clean.returncode == 0 and b"1 records, 1 valid events, 0 rejected" in clean.stdout
    assert cli(settings, "validate", str(tmp_path / "missing.jsonl")).returncode == 2


def test_replay_reads_a_record_too_big_to_quote_back_from_its_source(settings: Settings) -> None:
    ensure_topics(settings)
    topic = settings.topics.input("browse")
    big = orjson.dumps({**GOOD, "page": "x" * 5000})
    delivery = Publisher(settings.kafka, timeout_s=30).delivery()
    delivery.send(topic, b"u1", big)
    delivery.wait()
    [source] = list(read_topic(settings, topic))
    letter = DeadLetter(
        reason="string_too_long", detail="page is longer than 64", event_index=None, original_b64="",
        original_omitted=True, rejected_at="2026-11-01T08:00:00+00:00",
        source=DeadLetterSource(topic=topic, partition=source.partition(), offset=source.offset(), key="u1"),
    )
    delivery = Publisher(settings.kafka, timeout_s=30).delivery()
    delivery.send(settings.topics.dlq, b"u1", msgspec.json.encode(letter))
    delivery.wait()

    listed = cli(settings, "dlq").stdout.decode()
    assert "too big to quote" in listed
    assert cli(settings, "dlq", "replay", "--yes").returncode == 0
    assert [(msg.key(), msg.value()) for msg in read_topic(settings, topic)] == [(b"u1", big), (b"u1", big)]
