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
lane puts it on `reward.grants` exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from tierflow.agents.clock import Clock
from tierflow.agents.ingest import AppliedBatch, CustomerStage
from tierflow.agents.tiers import Notify
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.rewards.engine import RewardEngine
from tierflow.schemas.reward_grants import RewardRecord
from tierflow.schemas.tier_changes import TierChange


class RewardStage(CustomerStage):
    def __init__(self, ctx: Context, client: redis.Redis, clock: Clock, notify: Notify) -> None:
        self.engine = RewardEngine(client, ctx.config.rewards)
        self.clock = clock
        self.notify = notify
        self.worker = ctx.config.worker

    def run(self, batch: AppliedBatch) -> None:
        """Event-triggered rules and coupon redemption, after the state is applied."""
        now_ms = self.clock.now()
        self._written(r for item in batch.events for r in self.engine.on_event(item.event, item.ts_ms, now_ms))

    def on_published(self, changes: Iterable[TierChange]) -> set[str]:
        """Tier-triggered rules for changes committed to `tier.changes`; returns the users
        given records (the caller publishes them: they are in its lane)."""
        now_ms = self.clock.now()
        return {record.user_id for change in changes for record in self.engine.on_tier_change(change, now_ms)}

    def tick(self) -> None:
        self._written(self.engine.expire_points(self.clock.now(), self.worker.points_expiry_users))

    def _written(self, records: Iterable[RewardRecord]) -> None:
        users: set[str] = set()
        try:
            users.update(record.user_id for record in records)
        finally:
            # Records written before a customer's call raised wait in outboxes all the same,
            # and running the stage again grants nothing new to point at them.
            self.notify(users)
