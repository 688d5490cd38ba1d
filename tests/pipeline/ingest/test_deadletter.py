"""Dead letters stay within their size budget whatever the record (the producer
refuses larger records, and a refused dead letter would stop the partition), and
carry the original whenever it fits."""

from __future__ import annotations

import base64

import msgspec
import orjson

from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.ingest.deadletter import DeadLetters, Source, internal_error
from tierflow.pipeline.ingest.validate import Limits, parse_record

INGEST = load_config().ingest
LIMITS = Limits.of(INGEST)
NOW = 1_795_000_000_000
EVENT = {"event_id": "e1", "type": "interaction", "user_id": "u1", "ts": NOW - 1000, "channel": "app",
         "kind": "sign_in"}


def letters(value: bytes, key: bytes | None = b"u1") -> list[tuple[bytes | None, dict]]:
    rejected = parse_record(value, key, LIMITS, NOW)[1]
    assert rejected
    built = DeadLetters(INGEST).build(rejected, Source("touch.interaction", 3, 42, key, value, NOW), NOW)
    for letter in built:
        assert len(letter.value) + len(letter.key or b"") <= INGEST.dead_letter_max_bytes
    return [(letter.key, orjson.loads(letter.value)) for letter in built]


def test_a_small_record_travels_whole() -> None:
    value = orjson.dumps({**EVENT, "kind": "teleport"})
    [(key, letter)] = letters(value)
    assert key == b"u1"
    assert base64.b64decode(letter["original_b64"]) == value
    assert "original_omitted" not in letter


def test_a_huge_record_leaves_its_copy_at_the_source_offset() -> None:
    value = orjson.dumps({**EVENT, "type": "teleport", "pad": "x" * 900_000})
    [(key, letter)] = letters(value)
    assert (letter["reason"], letter["original_b64"], letter["original_omitted"]) == ("unknown_type", "", True)
    assert (letter["source"]["topic"], letter["source"]["offset"], key) == ("touch.interaction", 42, b"u1")


def test_many_bad_events_of_one_record_do_not_multiply_it() -> None:
    bad = {**EVENT, "kind": "teleport", "pad": "x" * 500}
    value = orjson.dumps({"events": [{**bad, "event_id": f"e{i}"} for i in range(1000)]})
    built = letters(value)
    assert len(built) == 1000
    assert all(letter["original_omitted"] and letter["event"]["event_id"] for _, letter in built)
    assert sum(len(orjson.dumps(letter)) for _, letter in built) < 2 * len(value)


def test_a_huge_rejected_event_is_left_out_too() -> None:
    value = orjson.dumps({"events": [EVENT, {**EVENT, "event_id": "e2", "kind": "?", "pad": "x" * 950_000}]})
    [(_, letter)] = letters(value)
    assert (letter["event_index"], letter["event"], letter["original_omitted"]) == (1, None, True)


def test_a_key_no_user_can_have_is_not_copied_onto_the_letter() -> None:
    key = b"k" * 900_000
    [(letter_key, letter)] = letters(orjson.dumps(EVENT), key=key)
    assert letter["reason"] == "key_mismatch"
    assert letter_key is None
    assert letter["source"]["key"] == "k" * (INGEST.max_id_length * 4)


def test_internal_error_names_the_type_and_a_hash_never_the_message() -> None:
    rejection = internal_error(ValueError("password=hunter2 in row 7"))
    assert rejection.reason == "internal_error"
    assert rejection.detail.startswith("ValueError #")
    assert "hunter2" not in rejection.detail
    assert internal_error(ValueError("password=hunter2 in row 7")) == rejection
    assert internal_error(ValueError("row 8")) != rejection


def test_a_rejected_event_nested_to_the_highest_bound_can_be_quoted() -> None:
    ingest = msgspec.structs.replace(INGEST, max_depth=200)
    nested = b"[" * 197 + b"]" * 197  # batch > events > event > extra: 200 deep
    bad = orjson.dumps({**EVENT, "kind": "?"})[:-1] + b',"extra":' + nested + b"}"
    value = b'{"events": [' + orjson.dumps(EVENT) + b"," + bad + b"]}"
    [rejection] = parse_record(value, b"u1", Limits.of(ingest), NOW)[1]
    assert rejection.reason == "schema:kind"
    [letter] = DeadLetters(ingest).build([rejection], Source("touch.interaction", 0, 0, b"u1", value, NOW), NOW)
    assert orjson.loads(letter.value)["event"]["kind"] == "?"
