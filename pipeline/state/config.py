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
