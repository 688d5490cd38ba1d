"""Tiers: re-evaluate the users a batch touched, and run the time-decay /
means-shift timer.

A commit that changes a tier appends a change record to the user's outbox, in
the same atomic call (pipeline/tiering/tiers.lua). The stage then tells the
publisher (agents/outputs.py) which users have records waiting; the owner of each
user's lane puts them on `tier.changes` exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tierflow.agents.clock import Clock, wall_ms
from tierflow.agents.ingest import AppliedBatch, CustomerStage
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.lua import Redis
from tierflow.pipeline.tiering.store import TierStore

Notify = Callable[[Iterable[str]], None]


class TierStage(CustomerStage):
    """Runs over every applied batch (evaluate, commit) before the offsets are committed."""

    def __init__(self, ctx: Context, client: Redis, clock: Clock, notify: Notify) -> None:
        self.tiers = TierStore(client, ctx.config)
        self.clock = clock
        self.notify = notify

    def run(self, batch: AppliedBatch) -> None:
        self.clock.observe(item.ts_ms for item in batch.events)
        # Always evaluate, even a pure replay: a crash may have struck after the state was
        # applied and before its tiers were committed. Evaluation is idempotent, and its
        # outbox includes records an earlier run left unpublished.
        self.notify(self.tiers.on_batch(batch.events, self.clock.now()).outbox)

    def tick(self) -> int:
        """Time decay and means shift; returns how many changes were recorded."""
        now_ms = self.clock.now()
        if now_ms == 0:  # event time before the first event: nothing to decay yet
            return 0
        # Means snapshots follow the wall clock even when tiering runs on event time.
        result = self.tiers.tick(now_ms, cadence_ms=wall_ms())
        parts = (result.decayed, result.swept)
        for part in parts:
            self.notify(part.outbox)
        return sum(len(part.appended) for part in parts)
