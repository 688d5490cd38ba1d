"""The Faust application that hosts every stage of the worker.

Faust owns the process: lifecycle, signals, timers, the web server and the
agent on the low-volume `tier.changes` topic. The high-volume input topics are
read by `IngestLoop` in a thread under the supervisor (see agents/ingest.py for
why), and the archive writer runs the same way (agents/archive.py).

One worker process has one Redis client, one clock, one Kafka publisher, and
the stages in data-flow order: state (inside the ingest loop) -> tiers ->
rewards, then the archive as its own consumer group.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import faust

from tierflow.agents.archive import install_archive
from tierflow.agents.clock import Clock
from tierflow.agents.ingest import IngestLoop
from tierflow.agents.rewards import RewardStage
from tierflow.agents.supervisor import Supervisor, hosted
from tierflow.agents.tiers import TierStage
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.kafka.publisher import Publisher
from tierflow.pipeline.state.store import StateStore, connect

log = logging.getLogger("tierflow.worker")


def faust_broker_credentials(ctx: Context) -> faust.SASLCredentials | None:
    kafka = ctx.settings.kafka
    if kafka.sasl_mechanism and kafka.sasl_username:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password or "",
            mechanism=kafka.sasl_mechanism,
        )
    return None


def create_app(ctx: Context) -> faust.App:
    settings = ctx.settings
    worker = ctx.config.worker
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
    publisher = Publisher(settings.kafka, worker.delivery_timeout_s)
    clock = Clock(settings.clock, client)
    store = StateStore(client, ctx.config.state.retention_days)
    tiers = TierStage(ctx, client, clock, publisher)
    rewards = RewardStage(ctx, client, clock, publisher)

    def ingest(stop: threading.Event) -> None:
        recovered = tiers.publisher.recover()
        if recovered:
            log.info("recovery: %d tier changes were already published", recovered)
        IngestLoop(ctx, store, publisher, stages=[tiers, rewards]).run(stop)

    supervisor = Supervisor("ingest", ingest, worker.restart_backoff_s)
    app.service(hosted(supervisor, worker.stop_timeout_s, publisher.close))

    tier_changes = app.topic(settings.topics.tier_changes, value_serializer="raw")

    @app.agent(tier_changes)
    async def grant_on_tier_changes(stream: faust.StreamT) -> None:
        """Tier-triggered rewards; Faust commits the offsets once a batch is granted."""
        async for values in stream.take(worker.reward_batch, within=worker.reward_batch_within_ms / 1000):
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
