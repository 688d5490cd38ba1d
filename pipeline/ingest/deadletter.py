"""Dead-letter records (schemas/touch.dlq.json): why a record or one event of a
batch was rejected, where it came from, and its original bytes."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson

from tierflow.pipeline.ingest.validate import Rejection


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
    return orjson.dumps(
        {
            "reason": rejection.reason,
            "detail": rejection.detail,
            "source": {
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "key": key.decode("utf-8", "replace") if key is not None else None,
                "timestamp_ms": timestamp_ms,
            },
            "event_index": rejection.event_index,
            "event": rejection.event,
            "original_b64": base64.b64encode(value or b"").decode("ascii"),
            "rejected_at": datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(),
        }
    )
