"""The `[ingest]` section: record bounds and consumer batching.
Defaults live in pipeline/config/defaults/core.toml."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec

from tierflow.pipeline.state.summary import MAX_TOTAL


class IngestConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    max_record_bytes: Annotated[int, msgspec.Meta(ge=256)]
    max_batch_events: Annotated[int, msgspec.Meta(ge=1)]
    # Nesting of a record's JSON: a valid event is at most 5 deep (batch > events > event
    # > items > item); a rejected event is quoted in its dead letter, and the encoder
    # refuses more than 254 levels.
    max_depth: Annotated[int, msgspec.Meta(ge=5, le=200)]
    # Characters in an id (event, user, order, sku, coupon, target) and a name (channel,
    # category, brand, page, source).
    max_id_length: Annotated[int, msgspec.Meta(ge=1)]
    max_name_length: Annotated[int, msgspec.Meta(ge=1)]
    # Lines of one order, and coupons redeemed on it.
    max_items: Annotated[int, msgspec.Meta(ge=1)]
    max_coupons: Annotated[int, msgspec.Meta(ge=0)]
    # In currency units: an order's amount and an order line's qty x price may not exceed
    # max_amount, a unit price max_price, a quantity max_quantity.
    max_amount: Annotated[float, msgspec.Meta(gt=0)]
    max_price: Annotated[float, msgspec.Meta(gt=0)]
    max_quantity: Annotated[int, msgspec.Meta(ge=1)]
    # Events before this instant, or further than max_future_seconds past the
    # wall clock, are rejected as ts_out_of_range.
    min_ts: datetime
    max_future_seconds: Annotated[int, msgspec.Meta(ge=0)]
    # A dead letter (key and value) larger than this leaves out the copy of the original
    # record (it stays at its source offset), then the rejected event: the producer
    # refuses records over its message.max.bytes (1,000,000 by default).
    dead_letter_max_bytes: Annotated[int, msgspec.Meta(ge=4096)]
    # Consumer batching: whichever limit is reached first closes a batch.
    batch_max_records: Annotated[int, msgspec.Meta(ge=1)]
    batch_max_ms: Annotated[int, msgspec.Meta(ge=1)]

    def __post_init__(self) -> None:
        # One order's cents must stay exact in the state's totals (see summary.MAX_TOTAL).
        if max(self.max_amount, self.max_price) * 100 > MAX_TOTAL:
            raise ValueError(f"max_amount and max_price must be at most {MAX_TOTAL // 100} (currency units)")

    @property
    def min_ts_ms(self) -> int:
        ts = self.min_ts if self.min_ts.tzinfo is not None else self.min_ts.replace(tzinfo=UTC)
        return int(ts.timestamp() * 1000)
