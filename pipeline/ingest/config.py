"""The `[ingest]` section: record bounds and consumer batching.
Defaults live in pipeline/config/defaults/core.toml."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec


class IngestConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    max_record_bytes: Annotated[int, msgspec.Meta(ge=256)]
    max_batch_events: Annotated[int, msgspec.Meta(ge=1)]
    # Events before this instant, or further than max_future_seconds past the
    # wall clock, are rejected as ts_out_of_range.
    min_ts: datetime
    max_future_seconds: Annotated[int, msgspec.Meta(ge=0)]
    # Consumer batching: whichever limit is reached first closes a batch.
    batch_max_records: Annotated[int, msgspec.Meta(ge=1)]
    batch_max_ms: Annotated[int, msgspec.Meta(ge=1)]

    @property
    def min_ts_ms(self) -> int:
        ts = self.min_ts if self.min_ts.tzinfo is not None else self.min_ts.replace(tzinfo=UTC)
        return int(ts.timestamp() * 1000)
