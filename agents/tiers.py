"""Tiers: re-evaluate the users a batch touched, publish their changes to
`tier.changes`, and run the time-decay / means-shift timer.

Publication is exactly once per (user, seq). Changes wait in each user's Redis
outbox (written atomically with the new tiers, pipeline/tiering/tiers.lua). A
publisher first claims a user's records up to a seq (pipeline/tiering/outbox.lua,
which also stamps the time) and sends only what it newly claimed, so the timer
and the ingest stage, or two workers, never send a record twice; after delivery
it acknowledges (trims) them. A crash after claiming leaves records that may or
may not be on the topic: on start-up `recover()` reads `tier.changes` from the
oldest claim stamp onwards, acknowledges what it finds there, and re-sends only
records that never reached Kafka. (Known limit: if two workers publish the same
user's records in the very moment one of them dies, the survivor's acknowledgement
can trim the dead one's undelivered records; consumers would see a version gap.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

import msgspec
import redis
from confluent_kafka import TopicPartition

from tierflow.agents.clock import Clock, wall_ms
from tierflow.agents.ingest import AppliedBatch
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.kafka import clients
from tierflow.pipeline.kafka.publisher import Publisher
from tierflow.pipeline.tiering.keys import TierKeys
from tierflow.pipeline.tiering.store import TierStore
from tierflow.schemas.tier_changes import TierChange

log = logging.getLogger("tierflow.tiers")

class TierPublisher:
    """Drains the users' tier-change outboxes to `tier.changes`."""

    def __init__(self, ctx: Context, tiers: TierStore, publisher: Publisher) -> None:
        self.ctx = ctx
        self.tiers = tiers
        self.publisher = publisher
        self.worker = ctx.config.worker
        self.topic = ctx.settings.topics.tier_changes
        self.published = 0

    def publish(self, outbox: Mapping[str, list[TierChange]], *, recovering: bool = False) -> None:
        """Send each user's unacknowledged records, then acknowledge them. Only records
        this call claims are sent; in recovery, the caller has already checked the topic."""
        if not outbox:
            return
        stamp = wall_ms()
        claimed_before = self.tiers.claim_changes({user: records[-1].seq for user, records in outbox.items()}, stamp)
        delivery = self.publisher.delivery()
        for (user, records), previous in zip(outbox.items(), claimed_before, strict=True):
            for record in records:
                if recovering or record.seq > previous:
                    delivery.send(self.topic, user.encode(), msgspec.json.encode(record))
        self.published += delivery.wait()
        self.tiers.ack_changes({user: records[-1].seq for user, records in outbox.items()})

    def recover(self) -> int:
        """Acknowledge records a crashed run delivered but did not acknowledge, then
        publish the rest. Returns how many records were found already published."""
        found = 0
        while True:
            users = self.tiers.outbox_users(self.worker.recovery_batch)
            pending = self.tiers.pending_changes(users)
            if not pending:
                return found
            stamps = self.tiers.client.pipeline(transaction=False)
            for user in pending:
                # When a publisher last claimed this user's records: they may be on the topic.
                stamps.hget(TierKeys.of(user).tier, "pub_ms")
            attempted = [int(s) for s in stamps.execute() if s is not None]
            if attempted:
                on_topic = self._published_since(min(attempted) - self.worker.clock_skew_ms, set(pending))
                done = {u: max(on_topic[u]) for u in pending if on_topic.get(u)}
                found += sum(len(v) for v in on_topic.values())
                self.tiers.ack_changes(done)
                pending = self.tiers.pending_changes(list(pending))
            self.publish(pending, recovering=True)
            if len(users) < self.worker.recovery_batch:
                return found

    def _published_since(self, since_ms: int, users: set[str]) -> dict[str, set[int]]:
        consumer = clients.consumer(self.ctx.settings.kafka, f"{self.ctx.settings.group_id}-recovery")
        seen: dict[str, set[int]] = {}
        try:
            metadata = consumer.list_topics(self.topic, timeout=10).topics[self.topic]
            wanted = [TopicPartition(self.topic, p, since_ms) for p in metadata.partitions]
            starts = consumer.offsets_for_times(wanted, timeout=10)
            ends = {p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
                    for p in metadata.partitions}
            assignment = [tp for tp in starts if tp.offset >= 0 and tp.offset < ends[tp.partition]]
            if not assignment:
                return seen
            consumer.assign(assignment)
            remaining = {tp.partition for tp in assignment}
            while remaining:
                msg = consumer.poll(5)
                if msg is None:
                    raise RuntimeError("tier.changes recovery scan stalled")
                if msg.error():
                    continue
                if msg.offset() + 1 >= ends[msg.partition()]:
                    remaining.discard(msg.partition())
                user = msg.key().decode() if msg.key() else ""
                if user in users:
                    record = msgspec.json.decode(msg.value(), type=TierChange)
                    seen.setdefault(user, set()).add(record.seq)
        finally:
            consumer.close()
        return seen


class TierStage:
    """Runs over every applied batch: evaluate, commit, publish; before the offsets are committed."""

    def __init__(self, ctx: Context, client: redis.Redis, clock: Clock, publisher: Publisher) -> None:
        self.tiers = TierStore(client, ctx.config)
        self.publisher = TierPublisher(ctx, self.tiers, publisher)
        self.clock = clock
        # Ingest and the timer both evaluate and publish; one at a time, so each sees
        # the other's acknowledgements.
        self.lock = threading.Lock()

    def run(self, batch: AppliedBatch) -> None:
        self.clock.observe(item.ts_ms for item in batch.events)
        with self.lock:
            # Always evaluate, even a pure replay: a crash may have struck after the state was
            # applied and before its tiers were committed. Evaluation is idempotent.
            result = self.tiers.on_batch(batch.events, self.clock.now())
            self.publisher.publish(result.outbox)

    def tick(self) -> int:
        """Time decay and means shift; returns how many changes were published."""
        now_ms = self.clock.now()
        if now_ms == 0:  # event time before the first event: nothing to decay yet
            return 0
        with self.lock:
            # Means snapshots follow the wall clock even when tiering runs on event time.
            result = self.tiers.tick(now_ms, cadence_ms=wall_ms())
            before = self.publisher.published
            for part in (result.decayed, result.swept):
                self.publisher.publish(part.outbox)
            return self.publisher.published - before
