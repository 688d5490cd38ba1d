"""Rewards: grant prizes when events match rules (a stage of every applied
batch) and when users enter tiers (changes as committed to `tier.changes`), and
expire points on the timer.

Tier-triggered grants follow the published records, not the in-process
evaluation: the publisher (agents/outputs.py) hands every change it committed to
`on_published` before it drops the change from its outbox, and a new owner of
the lane does the same for changes it finds on the topic. So a crash anywhere
loses no reward, and every engine call is idempotent on (rule, user, trigger),
so replays grant nothing twice. Each record the engine writes (grant, redemption,
expiry, cancellation) waits in the user's outbox, and the owner of the user's
lane puts it on `reward.grants` exactly once. Each batch of events or changes
costs a few pipelined Redis round trips, not one per trigger
(pipeline/rewards/granting.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from tierflow.agents.clock import Clock
from tierflow.agents.ingest import AppliedBatch, CustomerStage
from tierflow.agents.tiers import Notify
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.lua import Redis
from tierflow.pipeline.rewards.engine import RewardEngine
from tierflow.schemas.tier_changes import TierChange


class RewardStage(CustomerStage):
    def __init__(self, ctx: Context, client: Redis, clock: Clock, notify: Notify) -> None:
        self.engine = RewardEngine(client, ctx.config.rewards)
        self.clock = clock
        self.notify = notify
        self.worker = ctx.config.worker

    def run(self, batch: AppliedBatch) -> None:
        """Event-triggered rules and coupon redemption, after the state is applied: a few
        Redis round trips for the whole batch."""
        try:
            records = self.engine.on_events([(item.event, item.ts_ms) for item in batch.events], self.clock.now())
        except Exception:
            # Some of the batch's records may be written: they wait in outboxes all the same,
            # and running the stage again grants nothing new to point at them.
            self.notify(batch.users)
            raise
        self.notify({record.user_id for record in records})

    def on_published(self, changes: Iterable[TierChange]) -> set[str]:
        """Tier-triggered rules for changes committed to `tier.changes`; returns the users
        given records (the caller publishes them: they are in its lane)."""
        return {record.user_id for record in self.engine.on_tier_changes(list(changes), self.clock.now())}

    def tick(self) -> None:
        """One slice of the points expiry, on the timer thread (never the ingest thread)."""
        records = self.engine.expire_points(self.clock.now(), self.worker.points_expiry_users)
        self.notify({record.user_id for record in records})
