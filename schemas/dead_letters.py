"""The `touch.dlq` record: why an input record (or one event of a batch) was
rejected, where it came from, and its original bytes. Ingest writes it
(tierflow.pipeline.ingest.deadletter); schemas/touch.dlq.json is generated from
it (`python -m tierflow.schemas`).

Forward compatibility: the types do not forbid unknown fields, so a consumer
ignores a field a newer producer adds.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

REASON = (
    r"^(not_json|bad_encoding|too_large|too_deep|unknown_type|negative_amount|amount_out_of_range"
    r"|price_out_of_range|quantity_out_of_range|string_too_long|too_many_items|ts_out_of_range|key_mismatch"
    r"|not_an_event|conflicting_duplicate|refund_exceeds_order|internal_error|schema:.+)$"
)
Offset = Annotated[int, msgspec.Meta(ge=0)]


class DeadLetterSource(msgspec.Struct, frozen=True, kw_only=True):
    """The rejected record's place in Kafka."""

    topic: str
    partition: Offset
    offset: Offset
    key: Annotated[str | None, msgspec.Meta(description="The record key as text (invalid UTF-8 replaced).")]
    timestamp_ms: int | None = None


# kw_only: the field order is the published one, optional `event` before required ones.
class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """Value of a record on touch.dlq: why an input record (or one event of a batch) was
    rejected, where it came from, and its original bytes. The record key is the source
    record's key."""

    reason: Annotated[str, msgspec.Meta(pattern=REASON, description=(
        "Machine-readable reason: not_json, bad_encoding, too_large, too_deep, unknown_type, negative_amount,"
        " amount_out_of_range, price_out_of_range, quantity_out_of_range, string_too_long, too_many_items,"
        " ts_out_of_range, key_mismatch, not_an_event, conflicting_duplicate, refund_exceeds_order (refunds"
        " of an order beyond its amount), internal_error, or"
        " schema:<field path>."
    ))]
    detail: Annotated[str, msgspec.Meta(description="Human-readable explanation.")]
    source: DeadLetterSource
    event_index: Annotated[Offset | None, msgspec.Meta(
        description="Position of the rejected event inside a batch record; null when the whole record was rejected."
    )]
    event: Annotated[Any, msgspec.Meta(
        description=(
            "The rejected event of a batch as parsed (for conflicting_duplicate and the other reasons found"
            " when applying: of a single-event record too); null otherwise, or when it would make the letter"
            " larger than ingest.dead_letter_max_bytes."
        )
    )] = None
    original_b64: Annotated[str, msgspec.Meta(
        description=(
            "The source record's value, byte for byte; empty when original_omitted (the record stays at its"
            " source offset)."
        ),
        extra_json_schema={"contentEncoding": "base64"},
    )]
    original_omitted: Annotated[bool, msgspec.Meta(
        description=(
            "True when the copy of the original was left out: the letters of one record would have carried"
            " more than ingest.dead_letter_max_bytes of it."
        )
    )] = False
    rejected_at: Annotated[str, msgspec.Meta(
        description="RFC 3339, UTC.", extra_json_schema={"format": "date-time"}
    )]
