"""Turn one Kafka record into valid events and machine-readable rejections.

Pure: no I/O. A record is one event or a batch ``{"events": [...]}`` of one
user's events; a bad event inside a batch is rejected alone, its siblings pass.
No input raises: whatever the bytes, each part of a record is either a valid
event or a rejection with a reason (the bounds are the `[ingest]` settings).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import msgspec
import orjson

from tierflow.pipeline.ingest.config import IngestConfig
from tierflow.schemas.events import EVENT_TYPES, Batch, Browse, Cart, Event, Interaction, Item, Purchase, Refund

_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MONEY_FIELDS = re.compile(r"^(amount|price|items\[\d+\]\.price)$")
# A detail names the problem; it never repeats a huge value from the record.
_DETAIL_CHARS = 300
# JSON strings (whose brackets do not nest), and the bytes that are neither brackets
# nor what delimits strings.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"\\')
_INNERMOST = re.compile(rb"\[\]|\{\}")


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str
    event_index: int | None = None
    event: object = None


@dataclass(frozen=True, slots=True)
class ValidEvent:
    event: Event
    ts_ms: int
    # Position inside a batch record; None for a record that is one event.
    index: int | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    max_record_bytes: int
    max_batch_events: int
    max_depth: int
    max_id_length: int
    max_name_length: int
    max_items: int
    max_coupons: int
    max_amount: float
    max_price: float
    max_quantity: int
    min_ts_ms: int
    max_future_ms: int

    @classmethod
    def of(cls, ingest: IngestConfig) -> Limits:
        return cls(
            max_record_bytes=ingest.max_record_bytes,
            max_batch_events=ingest.max_batch_events,
            max_depth=ingest.max_depth,
            max_id_length=ingest.max_id_length,
            max_name_length=ingest.max_name_length,
            max_items=ingest.max_items,
            max_coupons=ingest.max_coupons,
            max_amount=ingest.max_amount,
            max_price=ingest.max_price,
            max_quantity=ingest.max_quantity,
            min_ts_ms=ingest.min_ts_ms,
            max_future_ms=ingest.max_future_seconds * 1000,
        )


def parse_ts(ts: str | int) -> int:
    """Epoch milliseconds from RFC 3339 (offset required) or epoch milliseconds."""
    if isinstance(ts, int):
        return ts
    parsed = datetime.fromisoformat(ts)
    if parsed.tzinfo is None:  # the schema pattern requires an offset; belt and braces
        raise ValueError("timestamp without offset")
    return int(parsed.timestamp() * 1000)


def clip(text: str) -> str:
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS] + "…"


def _schema_reason(exc: msgspec.ValidationError) -> tuple[str, str]:
    message = str(exc)
    match = _PATH.search(message)
    path = match.group("path") if match else ""
    if path == "type" or (not path and "`type`" in message):
        return "unknown_type", clip(message)
    if not path:
        missing = re.search(r"missing required field `([^`]+)`", message)
        path = missing.group(1) if missing else "value"
    if _MONEY_FIELDS.match(path) and ">= 0" in message:
        return "negative_amount", clip(message)
    return f"schema:{path}", clip(message)


def _texts(event: Event) -> tuple[list[str | None], list[str | None]]:
    """The event's ids and its names."""
    ids: list[str | None] = [event.event_id, event.user_id]
    names: list[str | None] = [event.channel]
    if isinstance(event, Purchase | Refund):
        items = event.items or []
        ids += [event.order_id, *(event.coupons if isinstance(event, Purchase) else []), *[i.sku for i in items]]
        names += [*[i.category for i in items], *[i.brand for i in items]]
        if isinstance(event, Refund):
            names.append(event.reason)
    elif isinstance(event, Cart):
        ids.append(event.sku)
        names.append(event.category)
    elif isinstance(event, Browse):
        ids.append(event.sku)
        names += [event.page, event.category, event.source]
    elif isinstance(event, Interaction):
        ids.append(event.target)
    return ids, names


def _path_of(event: Event, text: str) -> str:
    """Where `text` sits in the event, e.g. items[2].sku (only computed for a rejection)."""
    todo: list[tuple[str, object]] = [("", msgspec.to_builtins(event))]
    while todo:
        path, node = todo.pop(0)
        if node == text:
            return path
        if isinstance(node, dict):
            todo += [(f"{path}.{name}" if path else name, child) for name, child in node.items()]
        elif isinstance(node, list):
            todo += [(f"{path}[{i}]", child) for i, child in enumerate(node)]
    return "a string"


def _too_long(event: Event, limits: Limits) -> Rejection | None:
    ids, names = _texts(event)
    for texts, limit, kind in ((ids, limits.max_id_length, "id"), (names, limits.max_name_length, "name")):
        if max(map(len, filter(None, texts))) > limit:
            text = next(t for t in texts if t is not None and len(t) > limit)
            return Rejection(
                "string_too_long", f"{_path_of(event, text)} has {len(text)} characters, the {kind} limit is {limit}"
            )
    return None


def _quantity_and_price(path: str, qty: int, price: float, limits: Limits) -> Rejection | None:
    if qty > limits.max_quantity:
        return Rejection("quantity_out_of_range", f"{path}qty {qty} is above the limit {limits.max_quantity}")
    if price > limits.max_price:
        return Rejection("price_out_of_range", f"{path}price {price} is above the limit {limits.max_price}")
    return None


def check_bounds(event: Event, limits: Limits) -> Rejection | None:
    """The configured bounds (settings, so not part of the types): counts, string
    lengths, quantities, prices and amounts. Money is checked in currency units before
    anything becomes cents, so no total can leave the range the state keeps."""
    items: list[Item] = (event.items or []) if isinstance(event, Purchase | Refund) else []
    if len(items) > limits.max_items:
        return Rejection("too_many_items", f"{len(items)} order lines, limit {limits.max_items}")
    if isinstance(event, Purchase) and len(event.coupons) > limits.max_coupons:
        return Rejection("too_many_items", f"{len(event.coupons)} coupons, limit {limits.max_coupons}")
    problem = _too_long(event, limits)
    if problem is not None or isinstance(event, Browse | Interaction):
        return problem
    if isinstance(event, Cart):
        return _quantity_and_price("", event.qty, event.price, limits)
    for i, item in enumerate(items):
        if item.qty > limits.max_quantity or item.price > limits.max_price:
            return _quantity_and_price(f"items[{i}].", item.qty, item.price, limits)
        if item.qty * item.price > limits.max_amount:
            return Rejection("amount_out_of_range", f"items[{i}] qty x price is above the limit {limits.max_amount}")
    if event.amount > limits.max_amount:
        return Rejection("amount_out_of_range", f"amount {event.amount} is above the limit {limits.max_amount}")
    return None


def check_event(
    obj: object, key: str | None, limits: Limits, now_ms: int, index: int | None = None
) -> ValidEvent | Rejection:
    """Validate one decoded event against the contract and the semantic rules."""
    if not isinstance(obj, dict):
        return Rejection("not_an_event", f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        return Rejection("unknown_type", clip(f"type must be one of {sorted(EVENT_TYPES)}, got {kind!r}"))
    try:
        event = msgspec.convert(obj, Event)
    except msgspec.ValidationError as exc:
        reason, detail = _schema_reason(exc)
        return Rejection(reason, detail)
    if isinstance(event, Browse) and event.page is None and event.sku is None and event.category is None:
        return Rejection("schema:page", "a browse event needs at least one of page, sku or category")
    problem = check_bounds(event, limits)
    if problem is not None:
        return problem
    if key is not None and event.user_id != key:
        return Rejection("key_mismatch", clip(f"record key {key!r} differs from user_id {event.user_id!r}"))
    try:
        ts_ms = parse_ts(event.ts)
    except (ValueError, OverflowError) as exc:
        return Rejection("schema:ts", f"unparseable timestamp {event.ts!r}: {exc}")
    if not limits.min_ts_ms <= ts_ms <= now_ms + limits.max_future_ms:
        return Rejection("ts_out_of_range", f"event time {event.ts!r} is outside the accepted range")
    return ValidEvent(event, ts_ms, index)


def _too_deep(value: bytes, max_depth: int) -> bool:
    """Whether the JSON text nests deeper than max_depth, without parsing it (exact for
    valid JSON; malformed text may count as deep). A record with few brackets is
    settled by counting them; otherwise the brackets outside strings are peeled,
    innermost pairs first, one level per pass."""
    if value.count(b"[") + value.count(b"{") <= max_depth:
        return False
    brackets = value.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in brackets or b"\\" in brackets:  # brackets or escapes inside strings: strip strings first
        brackets = _STRING.sub(b"", value).translate(None, _NOT_STRUCTURE)
    for _ in range(max_depth):
        brackets, pairs = _INNERMOST.subn(b"", brackets)
        if not brackets:
            return False
        if not pairs:
            return True
    return True


def _depth_exceeds(doc: object, max_depth: int) -> bool:
    """Whether a parsed document nests deeper than max_depth (iterative: no recursion
    limit to hit, whatever the input)."""
    todo: list[tuple[object, int]] = [(doc, 1)]
    while todo:
        node, depth = todo.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > max_depth:
            return True
        todo += [(child, depth + 1) for child in children if isinstance(child, dict | list)]
    return False


# The fast path takes a bare batch only: anything beside `events` (e.g. a stray
# `type`) goes the full path, which decides and names the problem.
class _Batch(Batch, frozen=True, forbid_unknown_fields=True):
    pass


_EVENT = msgspec.json.Decoder(Event)
_BATCH = msgspec.json.Decoder(_Batch)


def _all_valid(value: bytes, key: str | None, limits: Limits, now_ms: int) -> list[ValidEvent] | None:
    """The fast path for the common case, a record whose events are all valid: decode
    and validate in one pass. None means "look closer": the full path gives the reasons."""
    # The decoders skip unknown fields recursively: nothing deep reaches them.
    if _too_deep(value, limits.max_depth):
        return None
    index: list[int | None]
    try:
        events = [_EVENT.decode(value)]
        index = [None]
    except msgspec.DecodeError:
        try:
            events = _BATCH.decode(value).events
        except msgspec.DecodeError:
            return None
        if not events or len(events) > limits.max_batch_events:
            return None
        if key is None:
            key = events[0].user_id
        index = list(range(len(events)))
    latest = now_ms + limits.max_future_ms
    valid = []
    for event, position in zip(events, index, strict=True):
        if key is not None and event.user_id != key:
            return None
        if isinstance(event, Browse) and event.page is None and event.sku is None and event.category is None:
            return None
        if check_bounds(event, limits) is not None:
            return None
        try:
            ts_ms = parse_ts(event.ts)
        except (ValueError, OverflowError):
            return None
        if not limits.min_ts_ms <= ts_ms <= latest:
            return None
        valid.append(ValidEvent(event, ts_ms, position))
    return valid


def parse_record(
    value: bytes | None, key: bytes | None, limits: Limits, now_ms: int
) -> tuple[list[ValidEvent], list[Rejection]]:
    """All valid events of a record, and one rejection per invalid part."""
    if value is None:
        return [], [Rejection("not_json", "record has no value (tombstone)")]
    if len(value) > limits.max_record_bytes:
        return [], [Rejection("too_large", f"record is {len(value)} bytes, limit {limits.max_record_bytes}")]
    try:
        key_text = key.decode("utf-8") if key is not None else None
    except UnicodeDecodeError:
        return [], [Rejection("bad_encoding", "record key is not valid UTF-8")]
    valid = _all_valid(value, key_text, limits, now_ms)
    if valid is not None:
        return valid, []
    return parse_document(value, key_text, limits, now_ms)


def parse_document(
    value: bytes, key_text: str | None, limits: Limits, now_ms: int
) -> tuple[list[ValidEvent], list[Rejection]]:
    """The full path: every event checked on its own, each problem with its reason."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return [], [Rejection("bad_encoding", "record value is not valid UTF-8")]
        if "depth limit" in str(exc):
            return [], [Rejection("too_deep", f"record nests deeper than the limit {limits.max_depth}")]
        return [], [Rejection("not_json", clip(f"record value is not JSON: {exc}"))]
    if _depth_exceeds(doc, limits.max_depth):
        return [], [Rejection("too_deep", f"record nests deeper than the limit {limits.max_depth}")]

    if not (isinstance(doc, dict) and "events" in doc and "type" not in doc):
        result = check_event(doc, key_text, limits, now_ms)
        if isinstance(result, Rejection):
            return [], [result]
        return [result], []

    events = doc["events"]
    if not isinstance(events, list) or not events:
        return [], [Rejection("schema:events", "a batch needs a non-empty list under 'events'")]
    if len(events) > limits.max_batch_events:
        return [], [
            Rejection("too_large", f"batch has {len(events)} events, limit {limits.max_batch_events}")
        ]
    # Without a record key the batch belongs to its first event's user.
    batch_user = key_text
    if batch_user is None and isinstance(events[0], dict) and isinstance(events[0].get("user_id"), str):
        batch_user = events[0]["user_id"]
    valid: list[ValidEvent] = []
    rejected: list[Rejection] = []
    for index, obj in enumerate(events):
        result = check_event(obj, batch_user, limits, now_ms, index)
        if isinstance(result, Rejection):
            rejected.append(
                Rejection(result.reason, result.detail, event_index=index, event=obj)
            )
        else:
            valid.append(result)
    return valid, rejected
