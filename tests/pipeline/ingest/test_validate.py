"""Pure validation: every input maps to valid events or reasoned rejections, never an exception."""

from __future__ import annotations

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.errors import ConfigError
from tierflow.pipeline.ingest.validate import Limits, parse_document, parse_record

NOW = 1_795_000_000_000
DEFAULTS = load_config().ingest
LIMITS = Limits.of(msgspec.structs.replace(DEFAULTS, max_record_bytes=4096, max_batch_events=3))
# Small bounds, so that generated records land on both sides of each of them.
TIGHT = Limits.of(msgspec.structs.replace(
    DEFAULTS, max_record_bytes=4096, max_batch_events=3, max_depth=6, max_id_length=8, max_name_length=6,
    max_items=2, max_coupons=1, max_amount=1000, max_price=100, max_quantity=5,
))
EVENT = {"event_id": "e1", "type": "interaction", "user_id": "u1", "ts": NOW - 1000,
         "channel": "app", "kind": "sign_in"}
PURCHASE = {"event_id": "p1", "type": "purchase", "user_id": "u1", "ts": NOW - 1000, "channel": "app",
            "order_id": "o1", "amount": 10.5, "currency": "CNY",
            "items": [{"sku": "s1", "category": "snacks", "qty": 1, "price": 10.5}]}
REASONS = {"not_json", "bad_encoding", "too_large", "too_deep", "unknown_type", "negative_amount",
           "amount_out_of_range", "price_out_of_range", "quantity_out_of_range", "string_too_long",
           "too_many_items", "ts_out_of_range", "key_mismatch", "not_an_event"}


def reasons(value: bytes, key: bytes | None = b"u1", limits: Limits = LIMITS) -> list[str]:
    return [r.reason for r in parse_record(value, key, limits, NOW)[1]]


def item(**changes: object) -> dict:
    return {**PURCHASE["items"][0], **changes}


def with_field(event: dict, text: bytes) -> bytes:
    """The event with one more (unknown) field whose JSON value is `text`."""
    return orjson.dumps(event)[:-1] + b',"extra":' + text + b"}"


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
    assert reasons(orjson.dumps({**PURCHASE, "amount": -1})) == ["negative_amount"]


def test_nesting_beyond_the_bound_is_too_deep_at_any_depth() -> None:
    """Reproduces the crash loop: 50,000 levels made the decoder raise RecursionError."""
    big = Limits.of(DEFAULTS)
    for depth in (50_000, 2_000, DEFAULTS.max_depth + 1):
        assert reasons(b"[" * depth + b"]" * depth, limits=big) == ["too_deep"]
        assert reasons(b'{"a":' * depth + b"1" + b"}" * depth, limits=big) == ["too_deep"]
        # Inside an unknown field of an otherwise valid event: the fast path skips such fields.
        inner = depth - 1
        assert reasons(with_field(EVENT, b"[" * inner + b"]" * inner), limits=big) == ["too_deep"]
    # Unclosed: malformed and deep at once.
    assert reasons(with_field(EVENT, b"[" * 50_000)[:-1], limits=big) == ["too_deep"]
    at_bound = DEFAULTS.max_depth - 1
    assert reasons(with_field(EVENT, b"[" * at_bound + b"]" * at_bound), limits=big) == []
    # Brackets inside strings do not nest.
    assert reasons(orjson.dumps({**EVENT, "target": "[" * 100}), limits=big) == []
    assert reasons(with_field(EVENT, orjson.dumps(['\\"[' * 100])), limits=big) == []


def test_money_and_quantities_beyond_their_bounds() -> None:
    """Reproduces the corruption: 1e17 wrapped the state's totals, 1e300 and 2**63 raised."""
    assert reasons(orjson.dumps({**PURCHASE, "amount": 1e17})) == ["amount_out_of_range"]
    assert reasons(orjson.dumps({**PURCHASE, "amount": 1e300})) == ["amount_out_of_range"]
    big = b"1" + b"0" * 30
    assert reasons(orjson.dumps(PURCHASE).replace(b'"amount":10.5', b'"amount":' + big)) == ["amount_out_of_range"]
    assert reasons(orjson.dumps(PURCHASE).replace(b'"qty":1', b'"qty":' + big)) == ["schema:items[0].qty"]
    assert reasons(orjson.dumps({**PURCHASE, "amount": DEFAULTS.max_amount})) == []
    assert reasons(orjson.dumps({**PURCHASE, "items": [item(qty=2**63)]})) == ["quantity_out_of_range"]
    assert reasons(orjson.dumps({**PURCHASE, "items": [item(qty=DEFAULTS.max_quantity + 1)]})) == [
        "quantity_out_of_range"]
    assert reasons(orjson.dumps({**PURCHASE, "items": [item(price=1e300)]})) == ["price_out_of_range"]
    # Each line within bounds, the line's total not.
    line = item(qty=DEFAULTS.max_quantity, price=DEFAULTS.max_price)
    assert reasons(orjson.dumps({**PURCHASE, "items": [line]})) == ["amount_out_of_range"]
    cart = {**EVENT, "type": "cart", "action": "add", "sku": "s1", "category": "c", "qty": 2**63, "price": 1}
    assert reasons(orjson.dumps(cart)) == ["quantity_out_of_range"]
    assert reasons(orjson.dumps({**cart, "qty": 1, "price": 1e20})) == ["price_out_of_range"]
    # Not representable as a double: not JSON to the decoder.
    assert reasons(orjson.dumps(PURCHASE).replace(b'"amount":10.5', b'"amount":1e400')) == ["not_json"]


def test_strings_and_counts_beyond_their_bounds() -> None:
    long_id, long_name = "x" * (DEFAULTS.max_id_length + 1), "x" * (DEFAULTS.max_name_length + 1)
    too_long = [
        {**EVENT, "event_id": long_id}, {**EVENT, "channel": long_name}, {**EVENT, "target": long_id},
        {**PURCHASE, "order_id": long_id}, {**PURCHASE, "coupons": [long_id]},
        {**PURCHASE, "items": [item(), item(sku=long_id)]}, {**PURCHASE, "items": [item(brand=long_name)]},
        {**EVENT, "type": "browse", "page": long_name},
    ]
    for event in too_long:
        [rejection] = parse_record(orjson.dumps(event), b"u1", LIMITS, NOW)[1]
        assert rejection.reason == "string_too_long", event
    [rejection] = parse_record(orjson.dumps(too_long[5]), b"u1", LIMITS, NOW)[1]
    assert rejection.detail.startswith("items[1].sku has 129 characters")
    assert reasons(orjson.dumps({**EVENT, "user_id": long_id}), key=None) == ["string_too_long"]
    assert reasons(orjson.dumps({**EVENT, "event_id": "x" * DEFAULTS.max_id_length})) == []
    assert reasons(orjson.dumps({**PURCHASE, "items": [item()] * (DEFAULTS.max_items + 1)}),
                   limits=Limits.of(DEFAULTS)) == ["too_many_items"]
    assert reasons(orjson.dumps({**PURCHASE, "coupons": ["c"] * (DEFAULTS.max_coupons + 1)})) == [
        "too_many_items"]


def test_a_bad_event_in_a_batch_is_rejected_alone() -> None:
    batch = {"events": [PURCHASE, {**PURCHASE, "event_id": "p2", "amount": 1e17}, {**EVENT, "channel": "c" * 99}]}
    valid, rejected = parse_record(orjson.dumps(batch), b"u1", LIMITS, NOW)
    assert [(v.event.event_id, v.index) for v in valid] == [("p1", 0)]
    assert [(r.reason, r.event_index) for r in rejected] == [("amount_out_of_range", 1), ("string_too_long", 2)]


def test_details_never_repeat_a_huge_value() -> None:
    for event in ({**EVENT, "kind": "k" * 100_000}, {**EVENT, "type": "t" * 100_000}):
        [rejection] = parse_record(orjson.dumps(event), b"u1", Limits.of(DEFAULTS), NOW)[1]
        assert len(rejection.detail) < 1000


def test_bounds_that_cents_could_not_hold_are_refused() -> None:
    assert DEFAULTS.max_amount * 100 < 2**53
    with pytest.raises(msgspec.ValidationError, match="max_amount"):
        msgspec.convert({**msgspec.to_builtins(DEFAULTS), "max_amount": 1e14}, type(DEFAULTS))


def test_a_config_file_may_not_lift_money_past_exact_cents(tmp_path) -> None:
    path = tmp_path / "tierflow.toml"
    path.write_text("[ingest]\nmax_price = 1e15\n")
    with pytest.raises(ConfigError, match="max_amount and max_price"):
        load_config(path)


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
def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def ids(size: int) -> st.SearchStrategy[str]:
    return st.text("ab[\\\"", min_size=1, max_size=size)


# Purchases on both sides of each TIGHT bound (ids 8, names 6, 2 lines, 1 coupon,
# amount 1000, price 100, qty 5, depth 6), the rest valid.
near_bounds = st.fixed_dictionaries(
    {"event_id": ids(10), "order_id": ids(10), "channel": ids(8), "amount": st.floats(0, 1200),
     "items": st.lists(st.fixed_dictionaries(
         {"sku": ids(10), "category": ids(8), "qty": st.integers(1, 7), "price": st.floats(0, 150)},
         optional={"brand": ids(8)}), min_size=1, max_size=3)},
    optional={"coupons": st.lists(ids(10), max_size=2), "extra": st.integers(1, 8).map(nested) | ids(20)},
).map(lambda d: {**PURCHASE, **d})
records = st.one_of(
    st.dictionaries(st.sampled_from(sorted(EVENT)), json_values).map(lambda d: {**EVENT, **d}),
    near_bounds,
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=64), json_values.map(orjson.dumps), records.map(orjson.dumps)))
def test_any_input_is_accepted_or_rejected_with_a_reason(value: bytes) -> None:
    for limits in (LIMITS, TIGHT):
        valid, rejected = parse_record(value, b"u1", limits, NOW)
        assert valid or rejected
        for r in rejected:
            assert r.reason in REASONS or r.reason.startswith("schema:")
            assert r.detail


def test_fast_path_equals_the_full_path_on_realistic_records() -> None:
    from tierflow.pipeline.demo.synth import Population

    events = list(Population(60, 30, NOW - 86_400_000, seed=3).events())
    records = [(orjson.dumps(e), e["user_id"].encode()) for e in events]
    records += [(orjson.dumps({"events": events[i:i + 3]}), None) for i in range(0, 60, 3)]
    limits = Limits.of(msgspec.structs.replace(DEFAULTS, max_batch_events=10))
    for value, key in records:
        fast = parse_record(value, key, limits, NOW)
        full = parse_document(value, key.decode() if key else None, limits, NOW)
        assert fast == full
        assert fast[0]


@settings(max_examples=500, deadline=None)
@given(records.map(orjson.dumps))
def test_fast_path_never_changes_a_decision(value: bytes) -> None:
    for limits in (LIMITS, TIGHT):
        for wrapped in (value, b'{"events": [' + value + b"]}", b'{"events": [' + value + b"," + value + b"]}"):
            assert parse_record(wrapped, b"u1", limits, NOW) == parse_document(wrapped, "u1", limits, NOW)


REFUND = {"event_id": "r1", "type": "refund", "user_id": "u1", "ts": NOW - 500, "channel": "app",
          "order_id": "o1", "amount": 4.5, "currency": "CNY"}


def test_refunds_are_bounded_like_purchases() -> None:
    assert reasons(orjson.dumps(REFUND)) == []
    assert reasons(orjson.dumps({**REFUND, "items": [item()], "reason": "damaged"})) == []
    assert reasons(orjson.dumps({**REFUND, "amount": -1})) == ["negative_amount"]
    assert reasons(orjson.dumps({**REFUND, "amount": DEFAULTS.max_amount + 1})) == ["amount_out_of_range"]
    assert reasons(orjson.dumps({**REFUND, "order_id": "x" * (DEFAULTS.max_id_length + 1)})) == ["string_too_long"]
    assert reasons(orjson.dumps({**REFUND, "reason": "x" * (DEFAULTS.max_name_length + 1)})) == ["string_too_long"]
    assert reasons(orjson.dumps({**REFUND, "items": [item(qty=DEFAULTS.max_quantity + 1)]})) == [
        "quantity_out_of_range"]
    assert reasons(orjson.dumps({**REFUND, "items": [item()] * (DEFAULTS.max_items + 1)}),
                   limits=Limits.of(DEFAULTS)) == ["too_many_items"]
    assert reasons(orjson.dumps({k: v for k, v in REFUND.items() if k != "order_id"})) == ["schema:order_id"]
    # A refund rides in a batch with its order, and either may be rejected alone.
    batch = {"events": [PURCHASE, REFUND, {**REFUND, "event_id": "r2", "amount": 1e17}]}
    valid, rejected = parse_record(orjson.dumps(batch), b"u1", LIMITS, NOW)
    assert [v.event.event_id for v in valid] == ["p1", "r1"]
    assert [(r.reason, r.event_index) for r in rejected] == [("amount_out_of_range", 2)]
    value = orjson.dumps(batch)
    assert parse_record(value, b"u1", LIMITS, NOW) == parse_document(value, "u1", LIMITS, NOW)
