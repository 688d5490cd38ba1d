"""The `[state]` section: rolling windows and how long day buckets are kept.
Defaults live in pipeline/config/defaults/core.toml."""

from __future__ import annotations

from typing import Annotated

import msgspec


class StateConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Rolling windows for frequency and monetary, in calendar days.
    windows_days: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=3650)]], msgspec.Meta(min_length=1)]
    # Day buckets older than this many days before a user's newest event are pruned
    # (by event time, so backfills keep working). Must cover the longest window.
    retention_days: Annotated[int, msgspec.Meta(ge=1)]
    # How long an event id is remembered after its record reached the input topic: an app
    # resending an event within this many hours is deduplicated (a conflicting resend is
    # dead-lettered). Replays of applied offsets are skipped at any age (offset watermarks).
    dedupe_window_hours: Annotated[int, msgspec.Meta(ge=1, le=8760)]
    # How long orders are kept for their refunds (~25 bytes each), in days before the
    # customer's newest event; None: the retention, which keeps refunds exact in any arrival
    # order. A refund whose order was dropped changes nothing (docs/domain.md, Refunds).
    refund_window_days: Annotated[int, msgspec.Meta(ge=1)] | None = None
