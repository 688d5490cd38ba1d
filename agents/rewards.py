"""Rewards: grant prizes when events match rules (a stage of every applied
batch) and when users enter tiers (a Faust agent on `tier.changes`), then drain
every grant, redemption, expiry and cancellation to `reward.grants`.

Tier-triggered grants read the durable `tier.changes` topic rather than the
in-process evaluation, so a crash after a tier change is published can never
lose its reward. Every engine call is idempotent on (rule, user, trigger), so
replays grant nothing twice. The outbox is drained by one thread of the
process at a time (ingest, the tier.changes agent and the timer all drain
it); a record is acknowledged only after the broker has it, so publication is
at least once and consumers drop duplicates by `record_id`.
"""

from __future__ import annotations

import logging
import threading

import orjson
import redis

from tierflow.agents.clock import Clock
from tierflow.agents.ingest import AppliedBatch
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.kafka.publisher import Publisher
from tierflow.pipeline.rewards.engine import RewardEngine
from tierflow.schemas.reward_grants import encode

log = logging.getLogger("tierflow.rewards")


class RewardStage:
    def __init__(self, ctx: Context, client: redis.Redis, clock: Clock, publisher: Publisher) -> None:
        self.engine = RewardEngine(client, ctx.config.rewards)
        self.clock = clock
        self.publisher = publisher
        self.worker = ctx.config.worker
        self.topic = ctx.settings.topics.reward_grants
        self.published = 0
        self._draining = threading.Lock()

    def run(self, batch: AppliedBatch) -> None:
        """Event-triggered rules and coupon redemption, after the state is applied."""
        now_ms = self.clock.now()
        for item in batch.events:
            self.engine.on_event(item.event, item.ts_ms, now_ms)
        self.drain()

    def on_tier_changes(self, values: list[bytes]) -> None:
        now_ms = self.clock.now()
        for value in values:
            try:
                self.engine.on_tier_change(orjson.loads(value), now_ms)
            except ValueError as exc:  # not ours to fix: log it and keep going
                log.warning("skipping malformed tier change: %s", exc)
        self.drain()

    def tick(self) -> None:
        self.engine.expire_points(self.clock.now(), self.worker.points_expiry_users)
        self.drain()

    def drain(self) -> None:
        """Publish the grant outbox; acknowledge only what the broker has."""
        with self._draining:
            while True:
                batch = self.engine.outbox(self.worker.outbox_batch)
                if not batch.records:
                    return
                delivery = self.publisher.delivery()
                for record in batch.records:
                    delivery.send(self.topic, record.user_id.encode(), encode(record))
                self.published += delivery.wait()
                self.engine.ack(batch)
                if len(batch.records) < self.worker.outbox_batch:
                    return
