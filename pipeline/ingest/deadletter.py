"""Dead-letter records (tierflow.schemas.dead_letters.DeadLetter): why a record or
one event of a batch was rejected, where it came from, and its original bytes.

A letter is bounded (`ingest.dead_letter_max_bytes`) whatever the record: the
producer refuses records over its message.max.bytes, and a refused dead letter
would stop the partition. The copy of the original is left out first (the record
stays at its source offset), then the rejected event.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import msgspec
import orjson

from tierflow.pipeline.ingest.config import IngestConfig
from tierflow.pipeline.ingest.validate import Rejection, ValidEvent, clip
from tierflow.schemas.dead_letters import DeadLetter, DeadLetterSource

# Bytes per character of UTF-8 at most: a key longer than max_id_length of them is no user's.
_UTF8_MAX = 4


def dead_letter(
    rejection: Rejection,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    timestamp_ms: int | None,
    now_ms: int,
    with_original: bool = True,
) -> bytes:
    letter = DeadLetter(
        reason=rejection.reason,
        detail=rejection.detail,
        source=DeadLetterSource(
            topic=topic,
            partition=partition,
            offset=offset,
            key=key.decode("utf-8", "replace") if key is not None else None,
            timestamp_ms=timestamp_ms,
        ),
        event_index=rejection.event_index,
        event=rejection.event,
        original_b64=base64.b64encode(value or b"").decode("ascii") if with_original else "",
        original_omitted=not with_original,
        rejected_at=datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(),
    )
    record = msgspec.to_builtins(letter)
    if with_original:
        del record["original_omitted"]  # false is the default: letters keep the bytes they always had
    # orjson writes the rejected event's numbers exactly as dead letters always had
    # them (msgspec writes 1e16 where orjson writes 1e+16).
    return orjson.dumps(record)


def internal_error(exc: BaseException) -> Rejection:
    """The rejection of a record that made the worker raise: the exception's type and a
    short hash of its message, enough to match the worker's log line, and nothing of
    the message itself (it may quote data)."""
    fingerprint = hashlib.blake2b(str(exc).encode("utf-8", "replace"), digest_size=6).hexdigest()
    return Rejection("internal_error", f"{type(exc).__name__} #{fingerprint}")


_REFUSALS = {
    "conflicting_duplicate": "event_id {id!r} was seen before with other content; nothing changed",
    "amount_out_of_range": "the customer's lifetime money would leave the range the state keeps exactly",
    "quantity_out_of_range": "the customer's lifetime quantities would leave the range the state keeps exactly",
}


def refused(item: ValidEvent, reason: str) -> Rejection:
    """The rejection of a valid event that the state store refused (apply.lua's reasons)."""
    detail = _REFUSALS[reason].format(id=clip(item.event.event_id))
    return Rejection(reason, detail, event_index=item.index, event=msgspec.to_builtins(item.event))


@dataclass(frozen=True, slots=True)
class Source:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class Letter:
    key: bytes | None
    value: bytes
    reason: str


class DeadLetters:
    """The letters of one record's rejections, each within the size budget."""

    def __init__(self, ingest: IngestConfig) -> None:
        self.max_bytes = ingest.dead_letter_max_bytes
        self.max_key_bytes = ingest.max_id_length * _UTF8_MAX

    def build(self, rejections: list[Rejection], source: Source, now_ms: int) -> list[Letter]:
        key = source.key
        if key is not None and len(key) > self.max_key_bytes:
            # No user has such a key: the letter goes without it and shows its start.
            source = replace(source, key=key[: self.max_key_bytes])
            key = None
        room = self.max_bytes - len(key or b"")
        # Every letter of a record would carry its own copy: together they stay in budget.
        with_original = len(rejections) * _base64_size(source.value) <= room
        letters = []
        for rejection in rejections:
            value = self._one(rejection, source, now_ms, with_original)
            if len(value) > room and with_original:
                value = self._one(rejection, source, now_ms, False)
            if len(value) > room:  # the rejected event itself is too large to quote
                value = self._one(replace(rejection, event=None), source, now_ms, False)
            letters.append(Letter(key, value, rejection.reason))
        return letters

    @staticmethod
    def _one(rejection: Rejection, source: Source, now_ms: int, with_original: bool) -> bytes:
        return dead_letter(
            rejection, topic=source.topic, partition=source.partition, offset=source.offset, key=source.key,
            value=source.value, timestamp_ms=source.timestamp_ms, now_ms=now_ms, with_original=with_original,
        )


def _base64_size(value: bytes | None) -> int:
    return (len(value or b"") + 2) // 3 * 4
