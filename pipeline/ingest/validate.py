"""Turn one Kafka record into valid events and machine-readable rejections.

Pure: no I/O. A record is one event or a batch ``{"events": [...]}`` of one
user's events; a bad event inside a batch is rejected alone, its siblings pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import msgspec
import orjson

from tierflow.pipeline.ingest.config import IngestConfig
from tierflow.schemas.events import EVENT_TYPES, Batch, Browse, Event

_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MONEY_FIELDS = re.compile(r"^(amount|price|items\[\d+\]\.price)$")


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


@dataclass(frozen=True, slots=True)
class Limits:
    max_record_bytes: int
    max_batch_events: int
    min_ts_ms: int
    max_future_ms: int

    @classmethod
    def of(cls, ingest: IngestConfig) -> Limits:
        return cls(
            max_record_bytes=ingest.max_record_bytes,
            max_batch_events=ingest.max_batch_events,
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


def _schema_reason(exc: msgspec.ValidationError) -> tuple[str, str]:
    message = str(exc)
    match = _PATH.search(message)
    path = match.group("path") if match else ""
    if path == "type" or (not path and "`type`" in message):
        return "unknown_type", message
    if not path:
        missing = re.search(r"missing required field `([^`]+)`", message)
        path = missing.group(1) if missing else "value"
    if _MONEY_FIELDS.match(path) and ">= 0" in message:
        return "negative_amount", message
    return f"schema:{path}", message


def check_event(obj: object, key: str | None, limits: Limits, now_ms: int) -> ValidEvent | Rejection:
    """Validate one decoded event against the contract and the semantic rules."""
    if not isinstance(obj, dict):
        return Rejection("not_an_event", f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        return Rejection("unknown_type", f"type must be one of {sorted(EVENT_TYPES)}, got {kind!r}")
    try:
        event = msgspec.convert(obj, Event)
    except msgspec.ValidationError as exc:
        reason, detail = _schema_reason(exc)
        return Rejection(reason, detail)
    if isinstance(event, Browse) and event.page is None and event.sku is None and event.category is None:
        return Rejection("schema:page", "a browse event needs at least one of page, sku or category")
    if key is not None and event.user_id != key:
        return Rejection("key_mismatch", f"record key {key!r} differs from user_id {event.user_id!r}")
    try:
        ts_ms = parse_ts(event.ts)
    except (ValueError, OverflowError) as exc:
        return Rejection("schema:ts", f"unparseable timestamp {event.ts!r}: {exc}")
    if not limits.min_ts_ms <= ts_ms <= now_ms + limits.max_future_ms:
        return Rejection("ts_out_of_range", f"event time {event.ts!r} is outside the accepted range")
    return ValidEvent(event, ts_ms)


# The fast path takes a bare batch only: anything beside `events` (e.g. a stray
# `type`) goes the full path, which decides and names the problem.
class _Batch(Batch, frozen=True, forbid_unknown_fields=True):
    pass


_EVENT = msgspec.json.Decoder(Event)
_BATCH = msgspec.json.Decoder(_Batch)


def _all_valid(value: bytes, key: str | None, limits: Limits, now_ms: int) -> list[ValidEvent] | None:
    """The fast path for the common case, a record whose events are all valid: decode
    and validate in one pass. None means "look closer": the full path gives the reasons."""
    try:
        events = [_EVENT.decode(value)]
    except msgspec.DecodeError:
        try:
            events = _BATCH.decode(value).events
        except msgspec.DecodeError:
            return None
        if not events or len(events) > limits.max_batch_events:
            return None
        if key is None:
            key = events[0].user_id
    latest = now_ms + limits.max_future_ms
    valid = []
    for event in events:
        if key is not None and event.user_id != key:
            return None
        if isinstance(event, Browse) and event.page is None and event.sku is None and event.category is None:
            return None
        try:
            ts_ms = parse_ts(event.ts)
        except (ValueError, OverflowError):
            return None
        if not limits.min_ts_ms <= ts_ms <= latest:
            return None
        valid.append(ValidEvent(event, ts_ms))
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
        return [], [Rejection("not_json", f"record value is not JSON: {exc}")]

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
        result = check_event(obj, batch_user, limits, now_ms)
        if isinstance(result, Rejection):
            rejected.append(
                Rejection(result.reason, result.detail, event_index=index, event=obj)
            )
        else:
            valid.append(result)
    return valid, rejected
