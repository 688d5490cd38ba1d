"""Dead-letter records (tierflow.schemas.dead_letters.DeadLetter): why a record or
one event of a batch was rejected, where it came from, and its original bytes."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import msgspec
import orjson

from tierflow.pipeline.ingest.validate import Rejection
from tierflow.schemas.dead_letters import DeadLetter, DeadLetterSource


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
        original_b64=base64.b64encode(value or b"").decode("ascii"),
        rejected_at=datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(),
    )
    # orjson writes the rejected event's numbers exactly as dead letters always had
    # them (msgspec writes 1e16 where orjson writes 1e+16).
    return orjson.dumps(msgspec.to_builtins(letter))
