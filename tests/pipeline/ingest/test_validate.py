"""Pure validation: every input maps to valid events or reasoned rejections, never an exception."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tierflow.pipeline.ingest.validate import Limits, parse_record

NOW = 1_795_000_000_000
LIMITS = Limits(max_record_bytes=4096, max_batch_events=3, min_ts_ms=946_684_800_000, max_future_ms=86_400_000)
EVENT = {"event_id": "e1", "type": "interaction", "user_id": "u1", "ts": NOW - 1000,
         "channel": "app", "kind": "sign_in"}
REASONS = {"not_json", "bad_encoding", "too_large", "unknown_type", "negative_amount",
           "ts_out_of_range", "key_mismatch", "not_an_event"}


def reasons(value: bytes, key: bytes | None = b"u1") -> list[str]:
    return [r.reason for r in parse_record(value, key, LIMITS, NOW)[1]]


def test_each_reason() -> None:
    assert reasons(b"nope") == ["not_json"]
    assert reasons(b"\xc3\x28") == ["bad_encoding"]
    assert reasons(b"{}" + b" " * 5000) == ["too_large"]
    assert reasons(orjson.dumps({**EVENT, "type": "x"})) == ["unknown_type"]
    assert reasons(orjson.dumps({**EVENT, "ts": NOW + 2 * 86_400_000})) == ["ts_out_of_range"]
    assert reasons(orjson.dumps(EVENT), key=b"other") == ["key_mismatch"]
    assert reasons(orjson.dumps({**EVENT, "kind": "teleport"})) == ["schema:kind"]
    assert reasons(orjson.dumps({"events": [EVENT] * 4})) == ["too_large"]
    assert reasons(orjson.dumps({"events": []})) == ["schema:events"]
    assert reasons(b"null") == ["not_an_event"]


def test_batch_without_key_belongs_to_its_first_user() -> None:
    other = {**EVENT, "event_id": "e2", "user_id": "u2"}
    valid, rejected = parse_record(orjson.dumps({"events": [EVENT, other]}), None, LIMITS, NOW)
    assert [v.event.event_id for v in valid] == ["e1"]
    assert [(r.reason, r.event_index) for r in rejected] == [("key_mismatch", 1)]


def test_rfc3339_and_epoch_agree() -> None:
    iso = {**EVENT, "ts": "2026-11-18T08:26:40+08:00"}
    epoch = {**EVENT, "ts": 1_794_961_600_000}
    assert parse_record(orjson.dumps(iso), b"u1", LIMITS, NOW)[0][0].ts_ms == \
        parse_record(orjson.dumps(epoch), b"u1", LIMITS, NOW)[0][0].ts_ms


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=64), json_values.map(orjson.dumps),
                 st.dictionaries(st.sampled_from(sorted(EVENT)), json_values).map(
                     lambda d: orjson.dumps({**EVENT, **d}))))
def test_any_input_is_accepted_or_rejected_with_a_reason(value: bytes) -> None:
    valid, rejected = parse_record(value, b"u1", LIMITS, NOW)
    assert valid or rejected
    for r in rejected:
        assert r.reason in REASONS or r.reason.startswith("schema:")
        assert r.detail


def test_fast_path_equals_the_full_path_on_realistic_records() -> None:
    from tierflow.pipeline.demo.synth import Population
    from tierflow.pipeline.ingest.validate import parse_document

    events = list(Population(60, 30, NOW - 86_400_000, seed=3).events())
    records = [(orjson.dumps(e), e["user_id"].encode()) for e in events]
    records += [(orjson.dumps({"events": events[i:i + 3]}), None) for i in range(0, 60, 3)]
    limits = Limits(1_000_000, 10, LIMITS.min_ts_ms, LIMITS.max_future_ms)
    for value, key in records:
        fast = parse_record(value, key, limits, NOW)
        full = parse_document(value, key.decode() if key else None, limits, NOW)
        assert fast == full


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(EVENT)), json_values).map(lambda d: orjson.dumps({**EVENT, **d})))
def test_fast_path_never_changes_a_decision(value: bytes) -> None:
    from tierflow.pipeline.ingest.validate import parse_document

    for wrapped in (value, b'{"events": [' + value + b"]}"):
        assert parse_record(wrapped, b"u1", LIMITS, NOW) == parse_document(wrapped, "u1", LIMITS, NOW)
