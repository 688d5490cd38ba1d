"""The worker's Prometheus metrics, served at GET /metrics on its web port.

Every name starts with `tierflow_`. The stages are measured from outside, at
construction (agents/app.py), so their code stays free of instrumentation:

- the ingest loop's own counters (`IngestLoop.stats`) are read at scrape time,
  carried over from one supervised run of the loop to the next;
- each stage's batch time by a wrapper that keeps the stage's kind (a customer
  stage stays one, so the loop can still bisect its failures);
- tier changes and reward records when the transaction that carried them to
  `tier.changes` / `reward.grants` has committed (`MeteredOutputs`): what a
  consumer of those topics sees, once per worker that committed it;
- consumer lag per input partition from the group's committed offsets, measured
  every `[worker] lag_interval_s` in a thread of its own, so a scrape never waits
  for the broker.

Counters count from the start of the process (Prometheus handles restarts with
`rate()` / `increase()`); with several workers, sum them. The lag is the group's,
so every worker reports the same figures: take the max, not the sum.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime

import msgspec
from aiohttp import web
from confluent_kafka import KafkaException
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tierflow.agents.clock import wall_ms
from tierflow.agents.ingest import AppliedBatch, CustomerStage, IngestLoop, IngestStats, Stage
from tierflow.agents.outputs import OnPublished, Outputs, Written
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.settings import Settings, Topics
from tierflow.pipeline.kafka import lag
from tierflow.pipeline.kafka.lag import PartitionLag
from tierflow.pipeline.lua import Redis
from tierflow.pipeline.outboxes import Read
from tierflow.schemas.events import TOPIC_OF
from tierflow.schemas.tier_changes import EVENT_REASONS, NOTICE_REASON, TierChange

log = logging.getLogger("tierflow.metrics")

METRICS_PATH = "/metrics"

MS_PER_S = 1000
# Event time to tier change: a live pipeline answers within tens of milliseconds to a
# second; a backfill of old events lands in the top buckets.
CHANGE_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0)
# One stage over one consumer batch (up to `ingest.batch_max_records` records).
STAGE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The campaign label of records that belong to none (manual points adjustments).
NO_CAMPAIGN = "none"


class _Campaign(msgspec.Struct):
    kind: str
    campaign: str | None = None


_campaign_of = msgspec.json.Decoder(_Campaign)


# --- pure counting ------------------------------------------------------------------------


def events_by_topic(batch: AppliedBatch, topics: Topics) -> Tally[str]:
    """Events per input topic (the topic of the event's type, where producers send it)."""
    kinds = Tally(type(item.event) for item in batch.events)  # the tag per kind, not per event: the hot path
    by_topic: Tally[str] = Tally()
    for kind, count in kinds.items():  # a refund travels on its order's topic
        by_topic[topics.input(TOPIC_OF[kind.__struct_config__.tag])] += count
    return by_topic


def changes_by_dimension(changes: Iterable[TierChange]) -> Tally[str]:
    """Changes per dimension; a will_downgrade notice changes nothing and is not one."""
    return Tally(change.dimension for change in changes if change.reason != NOTICE_REASON)


def notices_by_dimension(changes: Iterable[TierChange]) -> Tally[str]:
    return Tally(change.dimension for change in changes if change.reason == NOTICE_REASON)


def change_delays_s(changes: Iterable[TierChange], now_ms: int) -> list[float]:
    """Seconds from the event that caused each change to `now_ms`; changes that no
    event caused (time decay, means shift, a new configuration) have no such delay."""
    return [
        max(now_ms - int(datetime.fromisoformat(change.event_time).timestamp() * MS_PER_S), 0) / MS_PER_S
        for change in changes
        if change.reason in EVENT_REASONS
    ]


def records_by_campaign(raws: Iterable[str | bytes]) -> Tally[tuple[str, str]]:
    """Reward records per (campaign, kind)."""
    tally: Tally[tuple[str, str]] = Tally()
    for raw in raws:
        record = _campaign_of.decode(raw)
        tally[(record.campaign or NO_CAMPAIGN, record.kind)] += 1
    return tally


def add_stats(total: IngestStats, more: IngestStats) -> IngestStats:
    # dict() copies in one step: the ingest thread may add a reason meanwhile.
    reasons = Tally(dict(total.reasons))
    reasons.update(dict(more.reasons))
    return IngestStats(
        records=total.records + more.records, events=total.events + more.events,
        applied=total.applied + more.applied, rejected=total.rejected + more.rejected,
        batches=total.batches + more.batches, reasons=dict(reasons),
    )


# --- collectors read at scrape time -------------------------------------------------------


class IngestCounters(Collector):
    """The ingest loop's counters, summed over the loops the supervisor has run."""

    def __init__(self) -> None:
        self._finished = IngestStats()
        self._current: IngestLoop | None = None
        self._lock = threading.Lock()

    def watch(self, loop: IngestLoop) -> None:
        """From now on, count `loop` (the one before it is done)."""
        with self._lock:
            if self._current is not None:
                self._finished = add_stats(self._finished, self._current.stats)
            self._current = loop

    def totals(self) -> IngestStats:
        with self._lock:
            current = self._current
            return self._finished if current is None else add_stats(self._finished, current.stats)

    def collect(self) -> Iterator[Metric]:
        stats = self.totals()
        simple = (
            ("tierflow_ingest_records", "Records consumed from the input topics.", stats.records),
            ("tierflow_ingest_batches", "Consumer batches processed.", stats.batches),
            ("tierflow_events_applied", "Events that changed a customer's state (not duplicates).", stats.applied),
        )
        for name, documentation, value in simple:
            yield CounterMetricFamily(name, documentation, value=value)
        letters = CounterMetricFamily("tierflow_dead_letters", "Records and events sent to the dead-letter topic,"
                                      " by reason.", labels=["reason"])
        for reason, count in sorted(stats.reasons.items()):
            letters.add_metric([reason], count)
        yield letters


class ConsumerLag(Collector):
    """The ingest group's lag per input partition, as last measured (none while the
    broker does not answer: an unknown lag is absent, not zero)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rows: list[PartitionLag] = []
        self._failing = False

    def refresh(self) -> None:
        try:
            self.rows = lag.measure(self.settings)
        except KafkaException as exc:
            self.rows = []
            if not self._failing:
                log.warning("metrics: cannot measure the consumer lag (%s); trying again", exc)
            self._failing = True
            return
        if self._failing:
            log.info("metrics: measuring the consumer lag again")
        self._failing = False

    def watch(self, stop: threading.Event, interval_s: float) -> None:
        """Measure every `interval_s` until `stop` is set."""
        while not stop.is_set():
            self.refresh()
            stop.wait(interval_s)

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("tierflow_consumer_lag", "Records on an input partition that the worker group"
                                  " has not committed yet.", labels=["group", "topic", "partition"])
        for row in self.rows:
            gauge.add_metric([self.settings.group_id, row.topic, str(row.partition)], row.lag)
        yield gauge


# --- instruments at construction ----------------------------------------------------------


class _Timed:
    def __init__(self, stage: Stage, timer: Histogram) -> None:
        self.stage = stage
        self.timer = timer

    def run(self, batch: AppliedBatch) -> None:
        with self.timer.time():
            self.stage.run(batch)


class _TimedCustomerStage(_Timed, CustomerStage):
    """A timed customer stage is still one: the ingest loop bisects its failures."""


def _timed(stage: Stage, timer: Histogram) -> Stage:
    """The stage timed; a class named like the stage's, since the ingest loop's log lines name it."""
    base = _TimedCustomerStage if isinstance(stage, CustomerStage) else _Timed
    return type(type(stage).__name__, (base,), {"__doc__": base.__doc__})(stage, timer)


class _IngestTime:
    """The first stage: the batch's time so far, from its first record decoded to its
    events applied to the state (the stage "state")."""

    def __init__(self, timer: Histogram) -> None:
        self.timer = timer

    def run(self, batch: AppliedBatch) -> None:
        self.timer.observe(max(wall_ms() - batch.now_ms, 0) / MS_PER_S)


class _EventCount(CustomerStage):
    """The last stage: counts the events of a batch every stage went through. A
    customer stage, so the loop leaves out customers a stage set aside (their events
    are dead letters)."""

    def __init__(self, counter: Counter, topics: Topics) -> None:
        self.counter = counter
        self.topics = topics

    def run(self, batch: AppliedBatch) -> None:
        for topic, count in events_by_topic(batch, self.topics).items():
            self.counter.labels(topic).inc(count)


class Metrics:
    """The worker's registry and the instruments the app wires into its stages."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        registry = self.registry
        self.events = Counter("tierflow_events_processed", "Events through every stage, by input topic.",
                              ["topic"], registry=registry)
        self.tier_changes = Counter("tierflow_tier_changes", "Tier changes committed to tier.changes, by"
                                    " dimension.", ["dimension"], registry=registry)
        self.notices = Counter("tierflow_downgrade_notices", "will_downgrade notices committed to tier.changes,"
                               " by dimension.", ["dimension"], registry=registry)
        self.reward_records = Counter("tierflow_reward_records", "Reward records committed to reward.grants, by"
                                      " campaign and kind.", ["campaign", "kind"], registry=registry)
        self.change_delay = Histogram("tierflow_event_to_tier_change_seconds", "From an event's time to the tier"
                                      " change it caused being committed to tier.changes.",
                                      buckets=CHANGE_BUCKETS_S, registry=registry)
        self.stage_time = Histogram("tierflow_stage_batch_seconds", "Time one stage takes over one consumer"
                                    " batch.", ["stage"], buckets=STAGE_BUCKETS_S, registry=registry)
        self.ingest = IngestCounters()
        self.lag = ConsumerLag(settings)
        registry.register(self.ingest)
        registry.register(self.lag)
        ProcessCollector(namespace="tierflow", registry=registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def handle(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def stages(self, named: Mapping[str, Stage]) -> list[Stage]:
        """The stages in order, each timed under its name, after the time to apply the
        batch to the state and before the event count."""
        timed = [_timed(stage, self.stage_time.labels(name)) for name, stage in named.items()]
        return [_IngestTime(self.stage_time.labels("state")), *timed, _EventCount(self.events, self.settings.topics)]

    def published(self, changes: Iterable[TierChange], grants: Iterable[str]) -> None:
        """Records just committed to the output topics."""
        changes = list(changes)
        for dimension, count in changes_by_dimension(changes).items():
            self.tier_changes.labels(dimension).inc(count)
        for dimension, count in notices_by_dimension(changes).items():
            self.notices.labels(dimension).inc(count)
        for delay in change_delays_s(changes, wall_ms()):
            self.change_delay.observe(delay)
        for (campaign, kind), count in records_by_campaign(grants).items():
            self.reward_records.labels(campaign, kind).inc(count)


class MeteredOutputs(Outputs):
    """The publisher of the output lanes, counting what each committed transaction carried:
    `Outputs._publish` returns once every lane's transaction has committed, and raises
    (counting nothing) otherwise."""

    def __init__(self, metrics: Metrics, ctx: Context, client: Redis, written: Written,
                 on_published: OnPublished) -> None:
        super().__init__(ctx, client, written, on_published)
        self.metrics = metrics

    def _publish(self, by_lane: Mapping[int, list[str]], read: Read) -> dict[int, dict[str, int]]:
        ends = super()._publish(by_lane, read)
        sent = [read.users[user] for lane_users in by_lane.values() for user in lane_users if user in read.users]
        self.metrics.published((change for outboxes in sent for change in outboxes.changes),
                               (raw for outboxes in sent for raw in outboxes.rewards))
        return ends
