"""How a contender process times itself: from the first record in hand to the
target reached, or to a time cap (then it reports what it did within the cap).
Imports nothing from tierflow's dependencies, so every virtualenv can use it."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

STARTED = time.monotonic()  # start-up is reported from the process's first import


class Meter:
    def __init__(self, target_records: int, cap_s: float) -> None:
        self.target = target_records
        self.cap_s = cap_s
        self.records = 0
        self.events = 0
        self.t0: float | None = None
        self.t1: float | None = None

    def begin(self) -> None:
        if self.t0 is None:
            self.t0 = time.monotonic()

    def add(self, records: int, events: int) -> bool:
        """Count finished work; True once the target or the cap is reached."""
        self.begin()
        self.records += records
        self.events += events
        now = time.monotonic()
        assert self.t0 is not None
        if self.t1 is None and (self.records >= self.target or now - self.t0 >= self.cap_s):
            self.t1 = now
        return self.t1 is not None

    def result(self, **extra: object) -> dict[str, object]:
        assert self.t0 is not None and self.t1 is not None
        return {
            "records": self.records, "events": self.events, "seconds": self.t1 - self.t0,
            "startup_s": self.t0 - STARTED, "capped": self.records < self.target, **extra,
        }

    def write(self, path: str, **extra: object) -> None:
        Path(path).write_bytes(orjson.dumps(self.result(**extra)))
