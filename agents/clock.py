"""The worker's one clock: what "now" is for tiering and rewards.

`wall` (the default) is the machine's time. `event` (TIERFLOW_CLOCK=event, for
backfills and tests) is the newest event time any worker has seen, kept in
Redis so that every worker and every restart agrees on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from tierflow.pipeline import keyspace
from tierflow.pipeline.errors import ConfigError
from tierflow.pipeline.lua import Redis

CLOCK_MODES = ("wall", "event")


def wall_ms() -> int:
    return int(time.time() * 1000)


class Clock:
    KEY = keyspace.key("tf:clock")

    def __init__(self, mode: str, client: Redis) -> None:
        if mode not in CLOCK_MODES:
            raise ConfigError(f"TIERFLOW_CLOCK must be 'wall' or 'event', not {mode!r}")
        self.mode = mode
        self.client = client

    def observe(self, event_times_ms: Iterable[int]) -> None:
        """Let event time move forward to the newest of these events (never back)."""
        if self.mode == "event":
            newest = max(event_times_ms, default=None)
            if newest is not None:
                self.client.zadd(self.KEY, {"now": newest}, gt=True)

    def now(self) -> int:
        if self.mode == "wall":
            return wall_ms()
        return int(self.client.zscore(self.KEY, "now") or 0)
