"""tierflow end to end, side by side with the alternatives, in one run.

    python -m bench [--quick] [--out DIR] [--readme] [...]      (make bench)

On the same pre-produced topics (one event per record, the 60/20/10/10 mix of
bench/traffic.py), one after the other, each in its own process:

  raw     confluent-kafka consume + orjson.loads: the ceiling of any Python reader
  quix    Quix Streams doing the same state work in its own state store (bench/quix_tiers.py)
  naive   one Faust agent with per-event Redis reads and writes (bench/naive.py)
  tierflow  the real worker (`tierflow worker`, every stage on), timed until its
          group's lag is 0 and its outputs are flushed

Then the Redis bytes of the run's customers; on fresh topics, those of customers
active every day for 90 and 180 days (MEMORY USAGE of their keys) and the
latency event -> tier.changes at half the measured throughput. Then the tierflow
worker alone against batch sizes and populations, and 1, 2, 4 workers over more
partitions. Results go to DIR as JSON and charts; --readme also rewrites the
figures section of bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.ingest import Dataset, log, produce, quix_available
from bench.stats import cdf, latency_summary, percentile, ratio
from bench.traffic import Traffic, customer_id
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.domain import Config, load_config
from tierflow.pipeline.config.settings import Settings, Topics
from tierflow.pipeline.kafka import clients
from tierflow.pipeline.kafka.topics import delete_topics, ensure_topics

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_QUIX_PYTHON = str(ROOT / ".venv" / "quix" / "bin" / "python")  # made by `make bench`
README = ROOT / "bench" / "README.md"
README_BEGIN, README_END = "<!-- bench:figures -->", "<!-- /bench:figures -->"
POLL_S = 0.25  # how often the parent reads the worker group's lag
NO_SECOND_COMMIT_CAPS = 3
SETTLE_TIMEOUT_S = 120.0  # outputs flushed after lag 0, at most
STOP_TIMEOUT_S = 30.0
LATENCY_TICK_S = 0.01  # the paced producer sends what is due every tick
LATENCY_TAIL_S = 1.0  # once the worker has settled, the reader's last fetch
LATENCY_SHARE = 0.5  # of the measured end-to-end throughput
DAILY_PREFIXES = {90: "d90-", 180: "d180-"}
DUE_PAGE = 10_000  # due-set members rewritten per call
DUE_WARM_CAPS = 4  # the due-set warm-up is untimed: it may take this many sweep caps
SOAK_OVERLOAD = 1.5  # the soak offers this many times the measured events/s
SOAK_TICK_S = 0.05  # the soak producer sends what is due every tick
SOAK_RSS_EVERY_S = 5.0
SOAK_SETTLE_S = 60.0  # the RSS the soak compares against: the highest in its first minute
MIB = 1024 * 1024
WORKER_LOGLEVEL = os.environ.get("BENCH_WORKER_LOGLEVEL", "warning")


@dataclass(frozen=True)
class Plan:
    """How big one run is; --quick takes the small one."""

    events: int
    customers: int
    days: int
    cap_s: float  # a contender that has not finished by then reports its rate so far
    sweep_cap_s: float  # the same for each run of the tierflow sweep and scaling
    batch_sizes: tuple[int, ...]
    populations: tuple[int, ...]
    workers: tuple[int, ...]
    scaling_partitions: int
    latency_s: float
    daily_users: int  # customers active every day, per history length
    sample: int  # backlog customers whose keys are measured
    due_customers: int  # the due-set run: customers, and events in each of its two steps
    due_events: int
    soak_s: float  # the memory soak at full load (0: none)


FULL = Plan(events=300_000, customers=30_000, days=30, cap_s=90, sweep_cap_s=45, batch_sizes=(1, 5, 20),
            populations=(10_000, 30_000, 100_000), workers=(1, 2, 4), scaling_partitions=8,
            latency_s=40, daily_users=30, sample=1000, due_customers=30_000, due_events=100_000, soak_s=600)
QUICK = Plan(events=60_000, customers=30_000, days=30, cap_s=30, sweep_cap_s=30, batch_sizes=(1, 20),
             populations=(30_000,), workers=(), scaling_partitions=8, latency_s=10, daily_users=10, sample=300,
             due_customers=10_000, due_events=30_000, soak_s=60)


@dataclass
class Throughput:
    name: str
    events: int = 0
    records: int = 0
    seconds: float = 0.0
    startup_s: float | None = None
    capped: bool = False
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


# ------------------------------------------------------------- processes --


def create_topic(settings: Settings, name: str) -> None:
    """An output topic for a contender whose framework does not create it."""
    from confluent_kafka.admin import NewTopic

    from tierflow.pipeline.kafka.topics import admin

    client = admin(settings)  # kept referenced until the futures resolve
    for future in client.create_topics([NewTopic(name, num_partitions=settings.partitions)]).values():
        future.result()


def run_child(cmd: list[str], spec: dict[str, Any], workdir: Path, name: str, timeout: float) -> Throughput:
    """A contender process that writes its Meter result to spec['result_path']."""
    result_path = workdir / f"{name}.json"
    log_path = workdir / f"{name}.log"
    spec = {**spec, "result_path": str(result_path)}
    with log_path.open("wb") as out:
        proc = subprocess.Popen([*cmd, json.dumps(spec)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    if not result_path.exists():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-4:]
        return Throughput(name, error=f"exit {proc.returncode}: " + " | ".join(tail))
    result = orjson.loads(result_path.read_bytes())
    return Throughput(name, events=result["events"], records=result["records"], seconds=result["seconds"],
                      startup_s=result["startup_s"], capped=bool(result.get("capped")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Workers:
    """`tierflow worker` processes of one group, each with its own home (chDB is single-process)."""

    def __init__(self, settings: Settings, workdir: Path, name: str) -> None:
        self.settings = settings
        self.workdir = workdir
        self.name = name
        self.procs: list[subprocess.Popen] = []
        self.started = 0.0

    def start(self, count: int) -> None:
        self.started = time.monotonic()
        for i in range(count):
            home = self.workdir / f"{self.name}-{i}"
            home.mkdir(parents=True, exist_ok=True)
            env = {
                **os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": self.settings.redis_url,
                "TIERFLOW_TOPIC_PREFIX": self.settings.topics.prefix, "TIERFLOW_GROUP": self.settings.group_id,
                "TIERFLOW_REDIS_NAMESPACE": self.settings.redis_namespace,
                "TIERFLOW_PARTITIONS": str(self.settings.partitions), "TIERFLOW_HOME": str(home),
                "TIERFLOW_WEB_PORT": str(free_port()),
            }
            with (home / "worker.log").open("ab") as out:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tierflow.pipeline.cli.main", "worker", "--loglevel", WORKER_LOGLEVEL],
                    cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

    def check(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                tail = (self.workdir / f"{self.name}-{i}" / "worker.log").read_text(errors="replace")[-800:]
                raise RuntimeError(f"worker {i} exited {proc.returncode}: {tail}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.procs = []


# ------------------------------------------------------- tierflow worker --


def outputs_pending(client: redis.Redis, config: Config) -> bool:
    """Tier changes or reward records still waiting in an outbox."""
    from tierflow.pipeline.rewards.engine import RewardEngine
    from tierflow.pipeline.tiering.store import TierStore

    return bool(TierStore(client, config).outbox.users(1) or RewardEngine(client, config.rewards).outbox(1).records)


class Lag:
    """Records of the group still to commit up to `ends`, read by one probe consumer
    that never subscribes (it does not join the group): cheap enough to ask 4 times a second."""

    def __init__(self, settings: Settings, ends: dict[tuple[str, int], int]) -> None:
        from confluent_kafka import TopicPartition

        self.consumer = clients.consumer(settings.kafka, settings.group_id)
        self.ends = ends
        self.partitions = [TopicPartition(topic, p) for topic, p in ends]
        self.last = sum(ends.values())

    def left(self) -> int:
        from confluent_kafka import KafkaException

        from tierflow.pipeline.kafka.errors import is_transient

        try:
            committed = self.consumer.committed(self.partitions, timeout=10)
        except KafkaException as exc:  # a coordinator still loading: ask again next time
            if not is_transient(exc):
                raise
            return self.last
        # Nothing committed yet (a negative offset) counts from 0: the run's topics are fresh.
        self.last = sum(max(self.ends[(tp.topic, tp.partition)] - max(tp.offset, 0), 0) for tp in committed)
        return self.last

    def close(self) -> None:
        self.consumer.close()


def end_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    from tierflow.pipeline.kafka import lag

    return {(r.topic, r.partition): r.end for r in lag.measure(settings)}


def wait_settled(settings: Settings, ctx: Context, client: redis.Redis, workers: Workers,
                 ends: dict[tuple[str, int], int], deadline: float) -> None:
    """Until the archive has caught up with `ends` and no output waits in an outbox."""
    from tierflow.agents.archive import archive_group

    archive = Lag(replace(settings, group_id=archive_group(Context(settings, ctx.config))), ends)
    archived = not ctx.config.archive.enabled
    try:
        while True:
            archived = archived or archive.left() == 0
            if archived and not outputs_pending(client, ctx.config):
                return
            workers.check()
            if time.monotonic() > deadline:
                raise TimeoutError("outputs not flushed in time")
            time.sleep(POLL_S)
    finally:
        archive.close()


def wait_drained(settings: Settings, ctx: Context, client: redis.Redis, workers: Workers,
                 ends: dict[tuple[str, int], int], deadline: float) -> None:
    """Until the group's lag to `ends` is 0 and the outputs are flushed."""
    lag = Lag(settings, ends)
    try:
        while lag.left():
            workers.check()
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not catch up in time")
            time.sleep(POLL_S)
    finally:
        lag.close()
    wait_settled(settings, ctx, client, workers, ends, deadline)


def drain(settings: Settings, ctx: Context, client: redis.Redis, workers: Workers, dataset: Dataset,
          cap_s: float, name: str) -> Throughput:
    """Time the running workers through the dataset: from their first commit to
    lag 0 with the outputs flushed (records committed before the first observed
    commit are left out, so start-up and the group join are not counted)."""
    ends = end_offsets(settings)
    total = sum(ends.values())
    per_record = dataset.events_per_record
    t0 = done0 = None
    t_last, left_last = 0.0, total  # the latest commit seen: a capped rate runs to it, not to the cap
    lag = Lag(settings, ends)
    try:
        while True:
            workers.check()
            left = lag.left()
            now = time.monotonic()
            if left < left_last:
                t_last, left_last = now, left
            if t0 is None and left < total:
                t0, done0 = now, total - left
            if left == 0:
                break
            # A rate needs two commits: a slow worker gets up to NO_SECOND_COMMIT_CAPS caps for its second.
            if t0 is not None and done0 is not None and now - t0 >= cap_s:
                if t_last == t0 and now - t0 < cap_s * NO_SECOND_COMMIT_CAPS:
                    time.sleep(POLL_S)
                    continue
                if t_last == t0:
                    return Throughput(name, error=f"no commit within {now - t0:.0f} s after the first one")
                records = total - left_last - done0
                return Throughput(name, events=round(records * per_record), records=records, seconds=t_last - t0,
                                  startup_s=t0 - workers.started, capped=True)
            time.sleep(POLL_S)
    finally:
        lag.close()
    if done0 == total:
        return Throughput(name, error=f"all {total:,} records done by the first commit seen: too few to time, "
                                      "raise --events")
    t_lag = time.monotonic()
    wait_settled(settings, ctx, client, workers, ends, t_lag + SETTLE_TIMEOUT_S)
    t_end = time.monotonic()
    assert t0 is not None and done0 is not None
    records = total - done0
    return Throughput(name, events=round(records * per_record), records=records, seconds=t_end - t0,
                      startup_s=t0 - workers.started,
                      detail={"flush_s": round(t_end - t_lag, 2), "wall_s": round(t_end - workers.started, 2)})


def worker_run(settings: Settings, ctx: Context, client: redis.Redis, workdir: Path, dataset: Dataset,
               cap_s: float, name: str, count: int = 1) -> Throughput:
    """A fresh group and db, `count` workers through the dataset, stopped after."""
    client.flushdb()
    group = replace(settings, topics=Topics(prefix=dataset.prefix), group_id=f"{dataset.prefix}{name}")
    workers = Workers(group, workdir, name)
    workers.start(count)
    try:
        return drain(group, ctx, client, workers, dataset, cap_s, name)
    except (RuntimeError, TimeoutError) as exc:
        return Throughput(name, error=str(exc)[-300:])
    finally:
        workers.stop()


# ------------------------------------------------------- latency and size --


def parse_rfc3339_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def tail_changes(settings: Settings, stop: threading.Event, on_change: Callable[[int, dict, int], None]) -> None:
    """Read tier.changes from its current end (read_committed) until stopped."""
    from confluent_kafka import OFFSET_END, TopicPartition

    consumer = clients.consumer(settings.kafka, f"{settings.group_id}-latency", **{"isolation.level": "read_committed"})
    topic = settings.topics.tier_changes
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in partitions])
    try:
        while not stop.is_set():
            for msg in consumer.consume(1000, 0.1):
                if not msg.error():
                    on_change(msg.timestamp()[1], orjson.loads(msg.value()), int(time.time() * 1000))
    finally:
        consumer.close()


def latency(settings: Settings, traffic: Traffic, rate: float, seconds: float,
            settle: Callable[[], None]) -> dict[str, Any]:
    """Paced events stamped with their produce time; each tier.changes record of
    reason 'event' gives produce time -> its record timestamp (and -> when a reader saw it).
    `settle` returns once the worker has processed and published everything sent."""

    stamped: list[float] = []
    seen: list[float] = []

    def on_change(record_ms: int, change: dict, received_ms: int) -> None:
        if change.get("reason") == "event":
            event_ms = parse_rfc3339_ms(change["event_time"])
            stamped.append(record_ms - event_ms)
            seen.append(received_ms - event_ms)

    stop = threading.Event()
    reader = threading.Thread(target=tail_changes, args=(settings, stop, on_change), daemon=True)
    reader.start()
    time.sleep(1.0)  # the reader is assigned before the first paced event
    producer = clients.producer(settings.kafka)  # an app's producer: no bulk linger
    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < seconds:
        for _ in range(int(elapsed * rate) - sent):
            event = traffic.live(int(time.time() * 1000))
            producer.produce(settings.topics.input(str(event["type"])), key=str(event["user_id"]).encode(),
                             value=orjson.dumps(event))
            sent += 1
        producer.poll(0)
        time.sleep(LATENCY_TICK_S)
    producer.flush(30)
    settle()  # the slowest changes count too
    time.sleep(LATENCY_TAIL_S)
    stop.set()
    reader.join(10)
    return {"rate": round(rate), "seconds": seconds, "events": sent, "record_ms": latency_summary(stamped),
            "seen_ms": latency_summary(seen), "cdf_record_ms": cdf(stamped), "cdf_seen_ms": cdf(seen)}


def user_of(key: str) -> str | None:
    """The customer a key belongs to: every per-customer key carries the tag {u:ID}."""
    if not key.startswith("{u:"):
        return None
    return key[3:key.index("}")]


def state_size(client: redis.Redis, groups: dict[str, Callable[[str], bool]], sample: int,
               seed: int) -> dict[str, Any]:
    """Redis bytes per customer (MEMORY USAGE of every key with the customer's tag),
    for a sample of each group, and the keys shared by all customers per customer."""
    keys_of: dict[str, list[str]] = {}
    shared: list[str] = []
    for key in client.scan_iter(count=10_000):
        name = key.decode() if isinstance(key, bytes) else key
        user = user_of(name)
        if user is None:
            shared.append(name)
        else:
            keys_of.setdefault(user, []).append(name)

    def usage(keys: Sequence[str]) -> list[int]:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        return [n or 0 for n in pipe.execute()]

    out: dict[str, Any] = {"customers": len(keys_of), "shared_bytes_per_customer": (
        round(sum(usage(shared)) / max(len(keys_of), 1), 1))}
    rng = random.Random(seed)
    for name, member in groups.items():
        users = sorted(u for u in keys_of if member(u))
        chosen = rng.sample(users, min(sample, len(users)))
        if not chosen:
            continue
        by_key: dict[str, int] = {}  # where the bytes go: key name after the tag ("" is the profile)
        sizes: list[int] = []
        for user in chosen:
            keys = keys_of[user]
            used = usage(keys)
            sizes.append(sum(used))
            for key, n in zip(keys, used, strict=True):
                suffix = key[key.index("}") + 1:]
                by_key[suffix] = by_key.get(suffix, 0) + n
        sizes.sort()
        out[name] = {"sampled": len(sizes), "mean": round(sum(sizes) / len(sizes), 1),
                     "p50": percentile(sizes, 50), "p99": percentile(sizes, 99), "max": sizes[-1],
                     "keys": round(sum(len(keys_of[u]) for u in chosen) / len(chosen), 2),
                     "mean_by_key": {k: round(v / len(chosen)) for k, v in sorted(by_key.items())}}
    return out


# -------------------------------------------------------------- the run --


def encoded(events: Iterable[dict[str, object]]) -> list[tuple[str, str, bytes]]:
    return [(str(e["type"]), str(e["user_id"]), orjson.dumps(e)) for e in events]


def produce_set(settings: Settings, prefix: str, name: str, events: list[tuple[str, str, bytes]],
                batch: int, partitions: int | None = None) -> Dataset:
    shaped = replace(settings, topics=Topics(prefix=prefix), partitions=partitions or settings.partitions)
    dataset = produce(shaped, name, events, batch)
    log(f"produced {name}: {dataset.records:,} records, {dataset.events:,} events")
    return dataset


def produce_as_lived(settings: Settings, events: list[dict[str, object]]) -> None:
    """One record per event, stamped with the event's time as an app sending it live would
    stamp it: the dedupe window counts from the record's timestamp, so 90 days of history
    sent at once and stamped now would keep all 90 days of event ids."""
    ensure_topics(settings)
    producer = clients.producer(settings.kafka, bulk=True)
    for event in events:
        while True:
            try:
                producer.produce(settings.topics.input(str(event["type"])), key=str(event["user_id"]).encode(),
                                 value=orjson.dumps(event), timestamp=int(event["ts"]))  # type: ignore[call-overload]
                break
            except BufferError:  # local queue full: let librdkafka drain it
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("the daily customers' events were not all delivered")
    log(f"produced daily: {len(events):,} events stamped with their event time")


def side_by_side(args: argparse.Namespace, plan: Plan, settings: Settings, ctx: Context, client: redis.Redis,
                 workdir: Path, main: Dataset, traffic: Traffic) -> dict[str, Any]:
    spec = {"prefix": main.prefix, "redis_url": settings.redis_url, "partitions": settings.partitions,
            "records": main.records, "events": main.events, "cap_s": plan.cap_s, "profile": None}
    timeout = plan.cap_s + 120  # start-up and shutdown on top of the cap
    rows: dict[str, Throughput] = {}
    client.flushdb()
    rows["raw"] = run_child([sys.executable, "-m", "bench.ingest", "--child"],
                            {**spec, "contender": "raw", "group": f"{main.prefix}raw"}, workdir, "raw", timeout)
    log(f"raw: {rows['raw'].events_per_s:,.0f} events/s {rows['raw'].error or ''}")
    why_not = quix_available(args.quix_python)
    if why_not:
        rows["quix"] = Throughput("quix", error=why_not)
    else:
        client.flushdb()
        rows["quix"] = run_child([args.quix_python, "-W", "ignore", "-m", "bench.quix_tiers"],
                                 {**spec, "group": f"{main.prefix}quix", "out_topic": f"{main.prefix}quix.changes"},
                                 workdir, "quix", timeout)
    log(f"quix: {rows['quix'].events_per_s:,.0f} events/s {rows['quix'].error or ''}")
    client.flushdb()
    create_topic(settings, f"{main.prefix}naive.changes")
    rows["naive"] = run_child([sys.executable, "-m", "bench.naive"],
                              {**spec, "group": f"{main.prefix}naive", "out_topic": f"{main.prefix}naive.changes"},
                              workdir, "naive", timeout)
    log(f"naive: {rows['naive'].events_per_s:,.0f} events/s {rows['naive'].error or ''}")

    # tierflow last: the db then holds its customers' state, measured before the next flush.
    client.flushdb()
    group = replace(settings, topics=Topics(prefix=main.prefix), group_id=f"{main.prefix}tierflow")
    workers = Workers(group, workdir, "tierflow")
    workers.start(1)
    backlog: dict[str, Any] = {}
    try:
        rows["tierflow"] = drain(group, ctx, client, workers, main, plan.cap_s, "tierflow")
        log(f"tierflow: {rows['tierflow'].events_per_s:,.0f} events/s "
            f"{'(capped)' if rows['tierflow'].capped else ''}")
        # After a capped run, the customers hold only what was processed by then.
        backlog = state_size(client, {"backlog": lambda user: user.startswith("c")}, plan.sample, seed=1)
        backlog["backlog"]["partial"] = rows["tierflow"].capped
    except (RuntimeError, TimeoutError) as exc:
        rows.setdefault("tierflow", Throughput("tierflow", error=str(exc)[-300:]))
        log(f"tierflow: {exc}")
    finally:
        workers.stop()
    tier = rows["tierflow"].events_per_s or None
    ratios = {f"tierflow/{name}": ratio(tier, rows[name].events_per_s) for name in ("quix", "naive", "raw")}
    extra = state_and_latency(plan, settings, ctx, client, workdir, main.prefix.removesuffix("m.") + "l.",
                              traffic, tier) if tier else {}
    extra.setdefault("state_size", {}).update(backlog)
    return {"contenders": {name: asdict(row) | {"events_per_s": row.events_per_s} for name, row in rows.items()},
            "ratios": ratios, **extra}


def state_and_latency(plan: Plan, settings: Settings, ctx: Context, client: redis.Redis, workdir: Path,
                      prefix: str, traffic: Traffic, measured: float) -> dict[str, Any]:
    """On fresh topics and db, one worker: customers active daily for 90 and 180 days
    (their Redis bytes), then the paced latency run. Independent of whether the main
    run finished within its cap."""
    daily: list[dict[str, object]] = []
    for days, tag in DAILY_PREFIXES.items():
        users = [f"{tag}{customer_id(i)}" for i in range(1, plan.daily_users + 1)]
        daily += traffic.daily(users, days)
    produce_as_lived(replace(settings, topics=Topics(prefix=prefix)), daily)
    client.flushdb()
    group = replace(settings, topics=Topics(prefix=prefix), group_id=f"{prefix}tierflow")
    workers = Workers(group, workdir, "daily")
    workers.start(1)
    try:
        wait_drained(group, ctx, client, workers, end_offsets(group),
                     time.monotonic() + SETTLE_TIMEOUT_S + plan.cap_s)
        size = state_size(client, {f"daily_{days}d": (lambda user, t=tag: user.startswith(t))
                                   for days, tag in DAILY_PREFIXES.items()}, plan.sample, seed=1)
        log(f"state size: {json.dumps({k: v.get('mean') for k, v in size.items() if isinstance(v, dict)})}")
        paced = latency(group, traffic, measured * LATENCY_SHARE, plan.latency_s, lambda: wait_drained(
            group, ctx, client, workers, end_offsets(group), time.monotonic() + SETTLE_TIMEOUT_S))
        log(f"latency at {paced['rate']:,}/s: {paced['record_ms']}")
        return {"state_size": size, "latency": paced}
    except (RuntimeError, TimeoutError) as exc:
        log(f"state size and latency: {exc}")
        return {"state_and_latency_error": str(exc)[-300:]}
    finally:
        workers.stop()


def sweep(plan: Plan, args: argparse.Namespace, settings: Settings, ctx: Context, client: redis.Redis,
          workdir: Path, run_prefix: str, main_events: list[tuple[str, str, bytes]],
          main_tierflow: Throughput) -> dict[str, Any]:
    """tierflow alone against batch size (same events) and population (same event count)."""
    by_batch: dict[str, dict[str, Any]] = {}
    for batch in plan.batch_sizes:
        if batch == 1 and not main_tierflow.error:
            row = main_tierflow
        else:
            dataset = produce_set(settings, f"{run_prefix}b{batch}.", f"batch {batch}", main_events, batch)
            row = worker_run(settings, ctx, client, workdir, dataset, plan.sweep_cap_s, f"batch{batch}")
        by_batch[str(batch)] = asdict(row) | {"events_per_s": row.events_per_s}
        log(f"batch {batch}: {row.events_per_s:,.0f} events/s {row.error or ''}")
    by_population: dict[str, dict[str, Any]] = {}
    for customers in plan.populations:
        if customers == plan.customers and not main_tierflow.error:
            row = main_tierflow
        else:
            traffic = Traffic(customers, plan.days, int(time.time() * 1000), args.seed, run=f"{run_prefix}p{customers}")
            events = encoded(traffic.backlog(plan.events))
            dataset = produce_set(settings, f"{run_prefix}p{customers}.", f"{customers} customers", events, 1)
            del events
            row = worker_run(settings, ctx, client, workdir, dataset, plan.sweep_cap_s, f"pop{customers}")
        by_population[str(customers)] = asdict(row) | {"events_per_s": row.events_per_s}
        log(f"{customers:,} customers: {row.events_per_s:,.0f} events/s {row.error or ''}")
    return {"batch": by_batch, "population": by_population}


def scaling(plan: Plan, settings: Settings, ctx: Context, client: redis.Redis, workdir: Path,
            run_prefix: str, main_events: list[tuple[str, str, bytes]]) -> dict[str, Any]:
    if not plan.workers:
        return {}
    dataset = produce_set(settings, f"{run_prefix}s.", "scaling", main_events, 1, plan.scaling_partitions)
    wide = replace(settings, partitions=plan.scaling_partitions)
    rows: dict[str, dict[str, Any]] = {}
    for count in plan.workers:
        row = worker_run(wide, ctx, client, workdir, dataset, plan.sweep_cap_s, f"workers{count}", count)
        rows[str(count)] = asdict(row) | {"events_per_s": row.events_per_s}
        log(f"{count} worker(s) over {plan.scaling_partitions} partitions: {row.events_per_s:,.0f} events/s "
            f"{row.error or ''}")
    return {"partitions": plan.scaling_partitions, "workers": rows}


# -------------------------------------------------------- time and memory --


def due_shards(client: redis.Redis, ctx: Context) -> list[str]:
    from tierflow.pipeline.tiering.store import TierStore

    return [shard.due for shard in TierStore(client, ctx.config).shards.all]


def make_all_due(client: redis.Redis, ctx: Context, due_ms: int) -> int:
    """Every member of the decay schedule due at `due_ms`, as if a boundary passed for
    the whole population at once; returns how many there are."""
    moved = 0
    for key in due_shards(client, ctx):
        cursor = 0
        while True:
            cursor, page = client.zscan(key, cursor, count=DUE_PAGE)
            if page:
                client.zadd(key, {member: due_ms for member, _ in page})
                moved += len(page)
            if cursor == 0:
                break
    return moved


def due_now(client: redis.Redis, ctx: Context) -> int:
    now_ms = int(time.time() * 1000)
    return sum(int(client.zcount(key, "-inf", now_ms)) for key in due_shards(client, ctx))


def due_set(plan: Plan, settings: Settings, ctx: Context, client: redis.Redis, workdir: Path, run_prefix: str,
            seed: int) -> dict[str, Any]:
    """Does time-based work stall ingest? A worker processes a warm-up data set (its
    customers get decay boundaries); then, for `all_due`, every entry of the decay
    schedule is made due at once, and a second worker ingests more events of the same
    customers (the state is shared: same db, same namespace) while its timer works
    through that due set in slices. `baseline` is the same without the rewrite."""
    traffic = Traffic(plan.due_customers, plan.days, int(time.time() * 1000), seed, run=f"{run_prefix}due")
    warm = produce_set(settings, f"{run_prefix}dw.", "due-set warm-up", encoded(traffic.backlog(plan.due_events)), 1)
    ingest = produce_set(settings, f"{run_prefix}dm.", "due-set ingest", encoded(traffic.backlog(plan.due_events)), 1)
    rows: dict[str, Any] = {}
    for name, rewrite in (("baseline", False), ("all_due", True)):
        client.flushdb()
        first = replace(settings, topics=Topics(prefix=warm.prefix), group_id=f"{warm.prefix}{name}")
        workers = Workers(first, workdir, f"due-{name}-warm")
        workers.start(1)
        try:
            wait_drained(first, ctx, client, workers, end_offsets(first),
                         time.monotonic() + SETTLE_TIMEOUT_S + DUE_WARM_CAPS * plan.sweep_cap_s)
        except (RuntimeError, TimeoutError) as exc:
            rows[name] = {"error": f"warm-up: {str(exc)[-300:]}"}
            log(f"due set {name}: warm-up: {exc}")
            continue
        finally:
            workers.stop()
        scheduled = sum(int(client.zcard(key)) for key in due_shards(client, ctx))
        made_due = make_all_due(client, ctx, int(time.time() * 1000) - 1) if rewrite else 0
        second = replace(settings, topics=Topics(prefix=ingest.prefix), group_id=f"{ingest.prefix}{name}")
        workers = Workers(second, workdir, f"due-{name}")
        workers.start(1)
        try:
            row = drain(second, ctx, client, workers, ingest, plan.sweep_cap_s, name)
        except (RuntimeError, TimeoutError) as exc:
            row = Throughput(name, error=str(exc)[-300:])
        finally:
            workers.stop()
        left = due_now(client, ctx)
        rows[name] = asdict(row) | {"events_per_s": row.events_per_s, "scheduled": scheduled, "made_due": made_due,
                                    "due_left": left}
        log(f"due set {name}: {row.events_per_s:,.0f} events/s {row.error or ''}; {made_due:,} of {scheduled:,} "
            f"scheduled customers made due, {left:,} still due at the end")
    rates = [rows[n].get("events_per_s") for n in ("baseline", "all_due")]
    return {"customers": plan.due_customers, "events": plan.due_events, "rows": rows,
            "all_due/baseline": ratio(rates[1], rates[0]) if all(rates) else None}


def rss_bytes(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return int(line.split()[1]) * 1024 if line else None


def soak(plan: Plan, settings: Settings, ctx: Context, client: redis.Redis, workdir: Path, run_prefix: str,
         traffic: Traffic, measured: float) -> dict[str, Any]:
    """Is memory flat at full load? For `plan.soak_s`, a producer sends live events at
    SOAK_OVERLOAD times the measured throughput, so the worker never runs dry, and the
    worker's resident memory is sampled every SOAK_RSS_EVERY_S."""
    group = replace(settings, topics=Topics(prefix=f"{run_prefix}soak."), group_id=f"{run_prefix}soak")
    ensure_topics(group)
    client.flushdb()
    workers = Workers(group, workdir, "soak")
    workers.start(1)
    pid = workers.procs[0].pid
    rate = measured * SOAK_OVERLOAD
    producer = clients.producer(group.kafka, bulk=True)
    samples: list[tuple[float, int]] = []
    sent = 0
    start = next_sample = time.monotonic()
    try:
        while (elapsed := time.monotonic() - start) < plan.soak_s:
            for _ in range(int(elapsed * rate) - sent):
                event = traffic.live(int(time.time() * 1000))
                try:
                    producer.produce(group.topics.input(str(event["type"])), key=str(event["user_id"]).encode(),
                                     value=orjson.dumps(event))
                    sent += 1
                except BufferError:  # local queue full: let librdkafka drain it
                    break
            producer.poll(0)
            if time.monotonic() >= next_sample:
                workers.check()
                if (rss := rss_bytes(pid)) is not None:
                    samples.append((round(time.monotonic() - start, 1), rss))
                next_sample += SOAK_RSS_EVERY_S
            time.sleep(SOAK_TICK_S)
        producer.flush(30)
        total, left = _progress(group)
        done = total - left
    except RuntimeError as exc:
        return {"error": str(exc)[-300:], "rss_samples": samples}
    finally:
        workers.stop()
    second_half = [(t, rss) for t, rss in samples if t >= plan.soak_s / 2]
    first_min = [rss for t, rss in samples if t <= SOAK_SETTLE_S]
    out = {"seconds": plan.soak_s, "rate": round(rate), "sent": sent, "processed_records": done,
           "rss_samples": samples, "rss_mib_after_settle": round(max(first_min) / MIB, 1) if first_min else None,
           "rss_mib_end": round(samples[-1][1] / MIB, 1) if samples else None,
           "rss_mib_max": round(max(r for _, r in samples) / MIB, 1) if samples else None,
           "rss_mib_per_min_second_half": round(slope_per_min(second_half) / MIB, 2)
           if len(second_half) > 1 else None}
    log(f"soak {plan.soak_s:.0f} s at {rate:,.0f}/s offered, {done:,} records processed: RSS "
        f"{out['rss_mib_after_settle']} MiB at most in the first {SOAK_SETTLE_S:.0f} s, "
        f"{out['rss_mib_end']} MiB at the end, "
        f"{out['rss_mib_per_min_second_half']} MiB/min over the second half")
    return out


def _progress(settings: Settings) -> tuple[int, int]:
    from tierflow.pipeline.kafka import lag

    rows = lag.measure(settings)
    return sum(r.end for r in rows), sum(r.lag for r in rows)


def slope_per_min(points: Sequence[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, bytes), in bytes per minute."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_b = sum(b for _, b in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return 60 * sum((t - mean_t) * (b - mean_b) for t, b in points) / var if var else 0.0


def machine() -> dict[str, Any]:
    import confluent_kafka

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "confluent_kafka": confluent_kafka.version()[0], "load_1m": round(os.getloadavg()[0], 2)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (about 4 minutes)")
    parser.add_argument("--events", type=int, help="events in the main data set")
    parser.add_argument("--customers", type=int, help="customers in the main data set")
    parser.add_argument("--cap", type=float, help="seconds a contender may run before its rate so far counts")
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes for the throughput sweep (1 = single)")
    parser.add_argument("--populations", type=int, nargs="+", help="populations for the throughput sweep")
    parser.add_argument("--workers", type=int, nargs="*", help="worker counts for the scaling run (none: skip)")
    parser.add_argument("--skip", default="", help="comma-separated phases to leave out: sweep, scaling, due, soak")
    parser.add_argument("--soak", type=float, help="seconds of the memory soak at full load (0: none)")
    parser.add_argument("--redis-db", type=int, default=int(os.environ.get("BENCH_REDIS_DB", "7")),
                        help="Redis db the run uses; it is FLUSHED (default 7, or BENCH_REDIS_DB)")
    parser.add_argument("--quix-python", default=os.environ.get("BENCH_QUIX_PYTHON", DEFAULT_QUIX_PYTHON))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, help="results directory (default bench/results; --quick: results/quick)")
    parser.add_argument("--readme", action="store_true",
                        help="rewrite the figures section of bench/README.md (not with --quick)")
    parser.add_argument("--keep-topics", action="store_true")
    return parser.parse_args(argv)


def plan_of(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    overrides = {"events": args.events, "customers": args.customers, "cap_s": args.cap, "sweep_cap_s": args.cap,
                 "batch_sizes": tuple(args.batch) if args.batch else None,
                 "populations": tuple(args.populations) if args.populations else None,
                 "workers": tuple(args.workers) if args.workers is not None else None, "soak_s": args.soak}
    plan = replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if "sweep" in skip:
        plan = replace(plan, batch_sizes=(1,), populations=(plan.customers,))
    if "scaling" in skip:
        plan = replace(plan, workers=())
    if "due" in skip:
        plan = replace(plan, due_events=0)
    if "soak" in skip:
        plan = replace(plan, soak_s=0)
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    from bench.report import charts, readme_section, table
    from tierflow.infra.services import up

    args = parse_args(argv)
    plan = plan_of(args)
    out = args.out or ROOT / "bench" / "results" / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    base = Settings.from_env()
    settings = replace(base, redis_url=base.redis_url.rsplit("/", 1)[0] + f"/{args.redis_db}")
    up(settings)
    ctx = Context(settings, load_config(settings.config_path))
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    tag = uuid.uuid4().hex[:8]
    run_prefix = f"bench-{tag}-"
    started = time.monotonic()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "plan": asdict(plan), "mix": "60% browse, 20% cart, 10% interaction, 10% purchase",
    }
    try:
        with tempfile.TemporaryDirectory(prefix="tierflow-bench-") as tmp:
            workdir = Path(tmp)
            traffic = Traffic(plan.customers, plan.days, int(time.time() * 1000), args.seed, run=tag)
            log(f"generating {plan.events:,} events of {plan.customers:,} customers over {plan.days} days")
            events = encoded(traffic.backlog(plan.events))
            main_set = produce_set(settings, f"{run_prefix}m.", "main", events, 1)
            results["side_by_side"] = side_by_side(args, plan, settings, ctx, client, workdir, main_set, traffic)
            tier = Throughput(**{k: v for k, v in results["side_by_side"]["contenders"]["tierflow"].items()
                                 if k != "events_per_s"})
            results["sweep"] = sweep(plan, args, settings, ctx, client, workdir, run_prefix, events, tier)
            results["scaling"] = scaling(plan, settings, ctx, client, workdir, run_prefix, events)
            del events
            if plan.due_events:
                results["due_set"] = due_set(plan, settings, ctx, client, workdir, run_prefix, args.seed)
            if plan.soak_s and tier.events_per_s:
                results["soak"] = soak(plan, settings, ctx, client, workdir, run_prefix, traffic, tier.events_per_s)
    finally:
        client.flushdb()
        client.close()
        if not args.keep_topics:
            delete_topics(settings, tag)
    results["wall_s"] = round(time.monotonic() - started, 1)
    (out / "bench.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    written = charts(results, out)
    print(table(results))
    log(f"wrote {out / 'bench.json'} and {', '.join(p.name for p in written)} in {results['wall_s']}s")
    if args.readme and not args.quick:
        text = README.read_text()
        head, _, rest = text.partition(README_BEGIN)
        _, _, tail = rest.partition(README_END)
        README.write_text(f"{head}{README_BEGIN}\n{readme_section(results, out)}\n{README_END}{tail}")
    failed = [name for name, row in results["side_by_side"]["contenders"].items() if row["error"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
