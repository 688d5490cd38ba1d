"""The JSON Schema files (the cross-language contract) are the ones the Python
records generate, and the two accept and reject exactly the same events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import jsonschema
import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from referencing import Registry, Resource

from tests.fixtures.paths import ROOT
from tierflow.pipeline.ingest.deadletter import dead_letter
from tierflow.pipeline.ingest.validate import Rejection
from tierflow.schemas import __main__ as schemas_command
from tierflow.schemas import generate
from tierflow.schemas.dead_letters import DeadLetter
from tierflow.schemas.events import EVENT_TYPES, Event

SCHEMAS = ROOT / "schemas"


def test_checked_in_schema_files_are_generated_from_the_types() -> None:
    assert generate.stale(SCHEMAS) == [], "stale: run python -m tierflow.schemas"


def test_check_lists_stale_files_and_the_command_rewrites_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(generate, "DIRECTORY", tmp_path)
    assert schemas_command.main([]) == 0
    assert schemas_command.main(["--check"]) == 0
    (tmp_path / "tier.changes.json").write_text("{}")
    capsys.readouterr()
    assert schemas_command.main(["--check"]) == 1
    assert "tier.changes.json" in capsys.readouterr().err
    assert schemas_command.main([]) == 0
    assert schemas_command.main(["--check"]) == 0


@pytest.mark.parametrize("name", sorted(generate.CONTRACTS))
def test_published_records_tolerate_added_fields_and_say_so(name: str) -> None:
    """Forward compatibility: a consumer ignores a field a newer producer adds."""
    record = get_args(generate.CONTRACTS[name])[0]
    assert not record.__struct_config__.forbid_unknown_fields
    assert load(name)["additionalProperties"] is True


def load(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


def registry() -> Registry:
    resources = [
        (load(p.name)["$id"], Resource.from_contents(load(p.name)))
        for p in SCHEMAS.glob("*.json")
    ]
    # Relative $refs in batch.json resolve against its $id.
    return Registry().with_resources(resources)


def validator(name: str) -> jsonschema.protocols.Validator:
    schema = load(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=registry())


TOPIC_VALIDATORS = {t: validator(generate.EVENT_FILES[t]) for t in EVENT_TYPES}


def python_accepts(doc: object) -> bool:
    try:
        event = msgspec.convert(doc, Event)
    except msgspec.ValidationError:
        return False
    # The one rule JSON Schema states with anyOf: a browse names what was browsed.
    return not (doc["type"] == "browse" and not any(getattr(event, f) for f in ("page", "sku", "category")))


def schema_accepts(doc: dict) -> bool:
    kind = doc.get("type")
    if kind not in TOPIC_VALIDATORS:
        return False
    return TOPIC_VALIDATORS[kind].is_valid(doc)


BASE = {"event_id": "e1", "user_id": "u1", "ts": "2026-05-01T10:00:00+08:00", "channel": "app"}
VALID = {
    "purchase": {**BASE, "type": "purchase", "order_id": "o1", "amount": 25.5, "currency": "CNY",
                 "items": [{"sku": "DF001", "category": "dried_fruit", "qty": 2, "price": 12.75}],
                 "coupons": ["NEW666-001"]},
    "refund": {**BASE, "type": "refund", "order_id": "o1", "amount": 12.75, "currency": "CNY",
               "items": [{"sku": "DF001", "category": "dried_fruit", "qty": 1, "price": 12.75}], "reason": "returned"},
    "cart": {**BASE, "type": "cart", "action": "add", "sku": "DF001", "category": "dried_fruit",
             "qty": 1, "price": 12.75},
    "browse": {**BASE, "type": "browse", "sku": "DF001", "source": "search"},
    "interaction": {**BASE, "type": "interaction", "kind": "coupon_claim", "target": "NEW666"},
}


@pytest.mark.parametrize("kind", sorted(VALID))
def test_examples_are_valid_for_both(kind: str) -> None:
    assert schema_accepts(VALID[kind])
    assert python_accepts(VALID[kind])


MUTATIONS = [
    ("missing event_id", lambda d: d.pop("event_id")),
    ("empty user_id", lambda d: d.update(user_id="")),
    ("ts without offset", lambda d: d.update(ts="2026-05-01T10:00:00")),
    ("ts as float", lambda d: d.update(ts=1.5)),
    ("negative epoch", lambda d: d.update(ts=-1)),
    ("epoch millis", lambda d: d.update(ts=1_777_000_000_000)),
    ("ts with Z", lambda d: d.update(ts="2026-05-01T02:00:00.123Z")),
    ("channel too long", lambda d: d.update(channel="x" * 65)),
    ("channel number", lambda d: d.update(channel=5)),
    ("extra field", lambda d: d.update(campaign="spring")),
]
PURCHASE_MUTATIONS = [
    ("negative amount", lambda d: d.update(amount=-0.01)),
    ("amount as string", lambda d: d.update(amount="10")),
    ("lower-case currency", lambda d: d.update(currency="cny")),
    ("no items", lambda d: d.update(items=[])),
    ("zero qty", lambda d: d["items"][0].update(qty=0)),
    ("negative price", lambda d: d["items"][0].update(price=-1)),
    ("item without sku", lambda d: d["items"][0].pop("sku")),
    ("null brand", lambda d: d["items"][0].update(brand=None)),
    ("coupon not a string", lambda d: d.update(coupons=[1])),
]
OTHER_MUTATIONS = [
    ("refund", "negative amount", lambda d: d.update(amount=-1)),
    ("refund", "no order", lambda d: d.pop("order_id")),
    ("refund", "no lines", lambda d: d.pop("items")),
    ("refund", "null reason", lambda d: d.update(reason=None)),
    ("refund", "empty lines", lambda d: d.update(items=[])),
    ("cart", "bad action", lambda d: d.update(action="wishlist")),
    ("cart", "fractional qty", lambda d: d.update(qty=1.5)),
    ("browse", "nothing browsed", lambda d: d.pop("sku")),
    ("browse", "page only", lambda d: (d.pop("sku"), d.update(page="home"))),
    ("interaction", "unknown kind", lambda d: d.update(kind="teleport")),
    ("interaction", "no target", lambda d: d.pop("target")),
]


def _cases() -> list[tuple[str, str, object]]:
    cases = [(k, name, m) for k in VALID for name, m in MUTATIONS]
    cases += [("purchase", name, m) for name, m in PURCHASE_MUTATIONS]
    cases += list(OTHER_MUTATIONS)
    return cases


@pytest.mark.parametrize(("kind", "name", "mutate"), _cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_schema_and_records_agree_on_mutations(kind: str, name: str, mutate) -> None:
    doc = json.loads(json.dumps(VALID[kind]))
    mutate(doc)
    assert schema_accepts(doc) == python_accepts(doc), name


def test_required_fields_and_properties_match() -> None:
    for kind, record in EVENT_TYPES.items():
        schema = load(generate.EVENT_FILES[kind])
        python_schema = msgspec.json.schema(record)
        definition = python_schema["$defs"][python_schema["$ref"].rsplit("/", 1)[1]]
        assert set(schema["required"]) == set(definition["required"]), kind
        assert set(schema["properties"]) == set(definition["properties"]), kind


def test_batch_schema_accepts_mixed_batches() -> None:
    batch_validator = validator("batch.json")
    assert batch_validator.is_valid({"events": [VALID["browse"], VALID["purchase"], VALID["refund"]]})
    assert not batch_validator.is_valid({"events": []})
    assert not batch_validator.is_valid({"events": [{**VALID["cart"], "qty": 0}]})


def test_dead_letter_schema_is_valid_draft() -> None:
    schema = load("touch.dlq.json")
    jsonschema.validators.validator_for(schema).check_schema(schema)


def test_dead_letters_match_their_schema_and_type() -> None:
    event = {**VALID["purchase"], "amount": 1e16, "qty": 0}
    raw = dead_letter(
        Rejection("schema:qty", "Expected `int` >= 1", event_index=1, event=event),
        topic="touch.purchase", partition=2, offset=7, key=b"u1\xff", value=b'{"events": []}',
        timestamp_ms=1_777_000_000_000, now_ms=1_777_000_000_123,
    )
    expected = {
        "reason": "schema:qty", "detail": "Expected `int` >= 1",
        "source": {"topic": "touch.purchase", "partition": 2, "offset": 7, "key": "u1\ufffd",
                   "timestamp_ms": 1_777_000_000_000},
        "event_index": 1, "event": event, "original_b64": "eyJldmVudHMiOiBbXX0=",
        "rejected_at": "2026-04-24T03:06:40.123000+00:00",
    }
    assert raw == orjson.dumps(expected)  # the bytes dead letters have always had
    assert validator("touch.dlq.json").is_valid(orjson.loads(raw))
    # The flag is written only when set; readers see its default.
    assert msgspec.to_builtins(msgspec.json.decode(raw, type=DeadLetter)) == {**expected, "original_omitted": False}
    whole = dead_letter(Rejection("not_json", "record value is not JSON"), topic="touch.cart", partition=0,
                        offset=0, key=None, value=None, timestamp_ms=None, now_ms=0)
    assert validator("touch.dlq.json").is_valid(orjson.loads(whole))
    assert not validator("touch.dlq.json").is_valid({**orjson.loads(whole), "reason": "whim"})
    for reason in ("too_deep", "amount_out_of_range", "price_out_of_range", "quantity_out_of_range",
                   "string_too_long", "too_many_items", "conflicting_duplicate", "refund_exceeds_order",
                   "internal_error"):
        letter = orjson.loads(dead_letter(Rejection(reason, "why"), topic="touch.cart", partition=0, offset=0,
                                          key=b"u1", value=b"{}", timestamp_ms=None, now_ms=0, with_original=False))
        assert letter["original_omitted"] is True and letter["original_b64"] == ""
        assert validator("touch.dlq.json").is_valid(letter), reason


INTEGER_FIELDS = {"ts", "qty"}
scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-2, 2, allow_nan=False),
                   st.text(max_size=4))


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(VALID)), field=st.data(), value=scalar)
def test_random_field_values_agree(kind: str, field: st.DataObject, value: object) -> None:
    doc = json.loads(json.dumps(VALID[kind]))
    name = field.draw(st.sampled_from(sorted(k for k in doc if k != "type")))
    doc[name] = value
    if isinstance(value, float) and value.is_integer():
        # JSON Schema counts 1.0 as an integer; ingest is stricter. Documented in README.
        assert not python_accepts(doc) or name not in INTEGER_FIELDS
        return
    assert schema_accepts(doc) == python_accepts(doc), (name, value)
