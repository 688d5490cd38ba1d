"""The Faust application that hosts every stage of the worker.

Faust owns the process: lifecycle, signals, timers and the web server. The
high-volume input topics are read by `IngestLoop` in a thread under the
supervisor (see agents/ingest.py for why), and the archive writer runs the same
way (agents/archive.py). Tier-triggered rewards are granted by the publisher of
`tier.changes` as it commits each change (agents/outputs.py), not by a consumer.

One worker process has one Redis client, one clock, one Kafka publisher, and
the stages in data-flow order: state (inside the ingest loop) -> tiers ->
rewards, and beside them the outputs (publishing the output lanes this worker
owns from their outboxes, on a thread of their own, with one transactional
producer per lane: agents/outputs.py), then the archive as its own consumer
group.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from functools import partial
from pathlib import Path

import faust

from tierflow.agents.archive import install_archive
from tierflow.agents.clock import Clock
from tierflow.agents.health import Consuming, Health, worker_checks
from tierflow.agents.ingest import IngestLoop, is_outage
from tierflow.agents.lifecycle import bound_shutdown
from tierflow.agents.metrics import METRICS_PATH, MeteredOutputs, Metrics
from tierflow.agents.outputs import Written
from tierflow.agents.rewards import RewardStage
from tierflow.agents.supervisor import Supervisor, hosted
from tierflow.agents.tiers import TierStage
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.dashboard.server import HEALTH_PATH, protect
from tierflow.pipeline.kafka.publisher import Publisher
from tierflow.pipeline.state.store import StateStore, connect

log = logging.getLogger("tierflow.worker")


def faust_datadir(settings: Settings) -> Path:
    """Where Faust keeps its per-app directory: under the home, not wherever the
    process was started. Faust creates the last level only."""
    parent = settings.home / "faust"
    parent.mkdir(parents=True, exist_ok=True)
    return parent / "{conf.id}"


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
        # Faust's own pages (/router/, /table/, /stats/, /graph/) serve nothing we use.
        web_router_enabled=False,
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        topic_partitions=settings.partitions,
        # Faust's own group: a worker restarted after a crash starts once the dead one's
        # session has expired there, as in the ingest group.
        broker_session_timeout=worker.session_timeout_ms / 1000,
        broker_heartbeat_interval=worker.heartbeat_ms / 1000,
        topic_replication_factor=settings.replication,
        store="memory://",
        datadir=str(faust_datadir(settings)),
        value_serializer="raw",
    )
    # Every route of the web server behind the dashboard token, Faust's "/" included;
    # refuses a non-loopback address without one.
    protect(app.web.web_app, settings.web_host, settings.dashboard_token)
    bound_shutdown(app, worker.stop_timeout_s)

    metrics = Metrics(settings)
    consuming = Consuming()
    client = connect(settings.redis_url)
    publisher = Publisher(settings.kafka, worker.delivery_timeout_s)
    clock = Clock(settings.clock, client)
    store = StateStore.of(client, ctx.config.state)
    written = Written()
    tiers = TierStage(ctx, client, clock, written.add)
    rewards = RewardStage(ctx, client, clock, written.add)
    outputs = MeteredOutputs(metrics, ctx, client, written, rewards.on_published)
    # Outputs first: it gives the batch's new users their lane before the other stages
    # note them for the publisher thread, which routes them.
    stages = metrics.stages({"outputs": outputs, "tiers": tiers, "rewards": rewards})

    def ingest(stop: threading.Event) -> None:
        outputs.start()
        outputs.publish_in_background()
        loop = IngestLoop(ctx, store, publisher, stages=stages, owner=outputs)
        metrics.ingest.watch(loop)
        with consuming.running():
            loop.run(stop)

    def stopped() -> None:
        outputs.close()
        publisher.close()

    supervisor = Supervisor("ingest", ingest, worker.restart_backoff_s)
    app.service(hosted(app, supervisor, worker.stop_timeout_s, stopped))
    lag_watch = Supervisor("lag", partial(metrics.lag.watch, interval_s=worker.lag_interval_s),
                           worker.restart_backoff_s)
    # Nothing to finish there: a stop never waits for a measurement (up to a minute
    # while the broker is slow) under way.
    app.service(hosted(app, lag_watch, 0, lambda: None))

    @app.timer(ctx.config.tiering.decay.timer_interval_ms / 1000)
    async def decay_timer() -> None:
        """Re-evaluate users whose recency score or paid term changes with no new event."""
        try:
            changed = await asyncio.to_thread(tiers.tick)
            await asyncio.to_thread(rewards.tick)
        except Exception as exc:
            if is_outage(exc):  # the ingest loop and /healthz report the outage; no line a second here
                log.debug("tier timer skipped: a service is unavailable (%s)", exc)
            else:
                log.exception("tier timer failed; retrying on the next tick")
            return
        if changed:
            log.info("timer: %d tier changes (time decay / means shift)", changed)

    archive = install_archive(app, ctx)
    # /metrics behind the dashboard token like every route; /healthz open to probes.
    health = Health(worker_checks(settings, worker.health_timeout_s, consuming,
                                  archive if ctx.config.archive.enabled else None), worker.health_timeout_s)
    app.web.web_app.router.add_get(METRICS_PATH, metrics.handle)
    app.web.web_app.router.add_get(HEALTH_PATH, health.handle)
    return app
