"""The Faust application that hosts every stage of the worker.

Faust owns the process: lifecycle, signals, timers, the web server and the
agents on low-volume topics. The high-volume input topics are read by
`agents.ingest.IngestLoop` in a thread it supervises (see that module for why).
"""

from __future__ import annotations

import asyncio
import logging
import threading

import faust
from mode import Service

from tierflow.agents.ingest import IngestLoop
from tierflow.agents.rewards import RewardStage
from tierflow.agents.tiers import TierStage
from tierflow.pipeline.archive.service import install_archive
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.state.store import connect

log = logging.getLogger("tierflow.worker")

RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
# Tier changes are granted in small batches, one Redis round trip each.
REWARD_BATCH = 500
REWARD_BATCH_WITHIN_S = 0.2


def faust_broker_credentials(ctx: Context) -> faust.SASLCredentials | None:
    kafka = ctx.settings.kafka
    if kafka.sasl_mechanism and kafka.sasl_username:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password or "",
            mechanism=kafka.sasl_mechanism,
        )
    return None


class IngestService(Service):
    """Runs the ingest loop in a thread and restarts it after failures
    (Redis or Kafka outages): uncommitted batches are replayed, never lost."""

    def __init__(self, ctx: Context, tiers: TierStage, rewards: RewardStage, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.ctx = ctx
        self.tiers = tiers
        self.rewards = rewards
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def supervise(self) -> None:
        failures = 0
        while not self.stop_event.is_set():
            try:
                recovered = self.tiers.publisher.recover()
                if recovered:
                    log.info("recovery: %d tier changes were already published", recovered)
                IngestLoop(self.ctx, hooks=[self.tiers, self.rewards]).run(self.stop_event)
                failures = 0
            except Exception:
                delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
                failures += 1
                log.exception("ingest loop failed; restarting in %ss", delay)
                self.stop_event.wait(delay)

    async def on_start(self) -> None:
        self.thread = threading.Thread(target=self.supervise, name="tierflow-ingest", daemon=True)
        self.thread.start()

    async def on_stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            await asyncio.to_thread(self.thread.join, 30)


def create_app(ctx: Context) -> faust.App:
    settings = ctx.settings
    app = faust.App(
        f"{settings.group_id}-agents",
        broker=[f"kafka://{host}" for host in settings.kafka.bootstrap.split(",")],
        broker_credentials=faust_broker_credentials(ctx),
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        store="memory://",
        value_serializer="raw",
    )

    client = connect(settings.redis_url)
    tiers = TierStage(ctx, client)
    rewards = RewardStage(ctx, client, tiers.clock)

    class Ingest(IngestService):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(ctx, tiers, rewards, **kwargs)

    app.service(Ingest)

    tier_changes = app.topic(settings.topics.tier_changes, value_serializer="raw")

    @app.agent(tier_changes)
    async def grant_on_tier_changes(stream: faust.StreamT) -> None:
        """Tier-triggered rewards; Faust commits the offsets once a batch is granted."""
        async for values in stream.take(REWARD_BATCH, within=REWARD_BATCH_WITHIN_S):
            await asyncio.to_thread(rewards.on_tier_changes, list(values))

    @app.timer(ctx.config.tiering.decay.timer_interval_ms / 1000)
    async def decay_timer() -> None:
        """Re-evaluate users whose recency score or paid term changes with no new event."""
        try:
            published = await asyncio.to_thread(tiers.tick)
            await asyncio.to_thread(rewards.tick)
        except Exception:
            log.exception("tier timer failed; retrying on the next tick")
            return
        if published:
            log.info("timer: %d tier changes (time decay / means shift)", published)

    install_archive(app, ctx)
    return app
