"""Rewards: grant prizes when events match rules (ingest hook) and when users
enter tiers (a Faust agent on `tier.changes`), then publish every grant,
redemption, expiry and cancellation to `reward.grants`.

Tier-triggered grants read the durable `tier.changes` topic rather than the
in-process evaluation, so a crash after a tier change is published can never
lose its reward. Every engine call is idempotent on (rule, user, trigger), so
replays grant nothing twice; publication is at least once and consumers drop
duplicates by `record_id`.
"""

from __future__ import annotations

import logging

import orjson
import redis
from confluent_kafka import KafkaError, Producer

from tierflow.agents.ingest import AppliedBatch
from tierflow.agents.tiers import Clock
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.rewards.engine import RewardEngine
from tierflow.schemas.reward_grants import encode

log = logging.getLogger("tierflow.rewards")

OUTBOX_BATCH = 1000
POINTS_EXPIRY_USERS = 1000


class RewardStage:
    def __init__(self, ctx: Context, client: redis.Redis, clock: Clock) -> None:
        self.engine = RewardEngine(client, ctx.config.rewards)
        self.clock = clock
        self.topic = ctx.settings.topics.reward_grants
        self.producer = Producer(ctx.settings.kafka.confluent(**{"enable.idempotence": True, "linger.ms": 5}))
        self.published = 0

    def __call__(self, batch: AppliedBatch) -> None:
        """Ingest hook: event-triggered rules and coupon redemption, after the state is applied."""
        now_ms = self.clock.now()
        for item in batch.events:
            self.engine.on_event(item.event, item.ts_ms, now_ms)
        self.publish()

    def on_tier_changes(self, values: list[bytes]) -> None:
        now_ms = self.clock.now()
        for value in values:
            try:
                self.engine.on_tier_change(orjson.loads(value), now_ms)
            except ValueError as exc:  # not ours to fix: log it and keep going
                log.warning("skipping malformed tier change: %s", exc)
        self.publish()

    def tick(self) -> None:
        self.engine.expire_points(self.clock.now(), POINTS_EXPIRY_USERS)
        self.publish()

    def publish(self) -> None:
        """Drain the grant outbox to Kafka; acknowledge only what was delivered."""
        while True:
            batch = self.engine.outbox(OUTBOX_BATCH)
            if not batch.records:
                return
            failures: list[str] = []

            def on_delivery(err: KafkaError | None, _msg: object, failures: list[str] = failures) -> None:
                if err is not None:
                    failures.append(str(err))

            for record in batch.records:
                self.producer.produce(self.topic, key=record.user_id.encode(), value=encode(record),
                                      on_delivery=on_delivery)
            if self.producer.flush(30) != 0 or failures:
                raise RuntimeError(f"reward grants not delivered: {failures[:3]}")
            self.engine.ack(batch)
            self.published += len(batch.records)
            if len(batch.records) < OUTBOX_BATCH:
                return
