"""Ingest throughput, side by side on the same topics and data.

    python -m bench.ingest [--events N] [--users U] [--repeats R] [--json out.json]

Pre-produces N synthetic events (tierflow.pipeline.demo.synth, shuffled arrival) twice: once
as single-event records, once as per-user batch records (tierflow.pipeline.kafka.sender,
--batch events per record). Then, for each data set, runs every contender in
its own process against a fresh consumer group (and a flushed Redis db), back
to back, R times, and reports the median:

  raw     confluent-kafka consume + orjson.loads: the ceiling of any Python reader
  faust   a no-op Faust agent (faust.App, value_serializer='raw') over the topics
  ingest  tierflow's tierflow.agents.ingest.IngestLoop: validate, encode, Lua apply, commit
  quix    Quix Streams doing the same work in a batching sink (bench/quix_ingest.py)

Each contender's clock runs from the first record in hand to the last record
done (parsed / iterated / applied and committed), so process start-up and the
consumer-group join are left out of the rates and reported separately.
Quix Streams pins an older confluent-kafka than this project, so it runs from
its own virtualenv (--quix-python); see bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

from bench.meter import Meter
from tierflow.pipeline.config.settings import Settings, Topics

ROOT = Path(__file__).resolve().parent.parent

CONTENDERS = {
    "raw": "confluent consume + orjson (ceiling)",
    "faust": "Faust no-op agent",
    "ingest": "tierflow IngestLoop -> Redis",
    "quix": "Quix Streams sink -> Redis",
    "quix-msg": "Quix Streams per message -> Redis",
}
DEFAULT_CONTENDERS = ("raw", "faust", "ingest", "quix")
DEFAULT_QUIX_PYTHON = str(ROOT / ".venv" / "quix" / "bin" / "python")  # made by `make bench`
HISTORY_DAYS = 200  # synthetic event times spread over this many days before now
EVENTS_PER_USER_GUESS = 25
# librdkafka stops fetching a partition for fetch.queue.backoff.ms (default 1000) once
# its prefetch queue is full; a reader as fast as this one drains the queue within
# that second and then idles, so the default measures the stall, not the reader.
RAW_FETCH_QUEUE_BACKOFF_MS = 10  # Population averages ~36 events per user; generate with slack


@dataclass(frozen=True)
class Dataset:
    name: str
    prefix: str
    records: int
    events: int

    @property
    def events_per_record(self) -> float:
        return self.events / self.records


@dataclass
class Run:
    contender: str
    dataset: str
    repeat: int
    records: int = 0
    events: int = 0
    applied: int | None = None
    seconds: float | None = None
    startup_s: float | None = None
    error: str | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


@dataclass
class Summary:
    contender: str
    label: str
    dataset: str
    runs: int
    records_per_s: float
    events_per_s: float
    events_per_s_min: float
    events_per_s_max: float
    startup_s: float
    vs_faust: float | None = None
    vs_quix: float | None = None
    errors: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- children --


def child_settings(spec: dict[str, Any]) -> Settings:
    return replace(
        Settings.from_env(), topics=Topics(prefix=spec["prefix"]), group_id=spec["group"],
        redis_url=spec["redis_url"], partitions=spec["partitions"],
    )


def child_raw(spec: dict[str, Any]) -> dict[str, object]:
    """The ceiling: the same consumer settings as IngestLoop, orjson.loads, nothing else."""
    from confluent_kafka import Consumer

    from tierflow.pipeline.config.domain import load_config

    settings = child_settings(spec)
    ingest = load_config(settings.config_path).ingest
    consumer = Consumer(settings.kafka.confluent(**{
        "group.id": settings.group_id, "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "partition.assignment.strategy": "cooperative-sticky",
        "fetch.wait.max.ms": ingest.batch_max_ms,
        "fetch.queue.backoff.ms": RAW_FETCH_QUEUE_BACKOFF_MS,
    }))
    consumer.subscribe(list(settings.topics.inputs))
    clock = Meter(spec["records"], cap_s=math.inf)  # the ingest-only runs go to the end
    loads = orjson.loads
    try:
        while True:
            messages = consumer.consume(ingest.batch_max_records, ingest.batch_max_ms / 1000)
            if not messages:
                continue
            clock.begin()
            records = events = 0
            for msg in messages:
                if msg.error():
                    continue
                doc = loads(msg.value())
                records += 1
                batch = doc.get("events") if "type" not in doc else None
                events += len(batch) if isinstance(batch, list) else 1
            if clock.add(records, events):
                return clock.result()
    finally:
        consumer.close()


def child_faust(spec: dict[str, Any]) -> dict[str, object]:
    """A real Faust worker with one agent that only counts what it iterates."""
    import faust

    from tierflow.agents.app import faust_broker_credentials, faust_datadir
    from tierflow.pipeline.config.context import Context
    from tierflow.pipeline.config.domain import load_config

    settings = child_settings(spec)
    ctx = Context(settings, load_config(settings.config_path))
    app = faust.App(
        settings.group_id,
        broker=[f"kafka://{host}" for host in settings.kafka.bootstrap.split(",")],
        broker_credentials=faust_broker_credentials(ctx),
        value_serializer="raw", store="memory://", web_enabled=False,
        datadir=str(faust_datadir(settings)),
        topic_partitions=settings.partitions, topic_replication_factor=1,
    )
    clock = Meter(spec["records"], cap_s=math.inf)  # the ingest-only runs go to the end
    # A no-op agent cannot count events inside batch records without parsing them;
    # it is credited with the data set's events per record.
    per_record = spec["events"] / spec["records"]

    @app.agent(app.topic(*settings.topics.inputs))
    async def noop(stream: faust.StreamT) -> None:
        async for _value in stream:
            clock.begin()
            if clock.add(1, 0) and clock.records == clock.target:
                clock.events = spec["events"]
                write_result(spec, clock.result(events_per_record=per_record))
                os.kill(os.getpid(), signal.SIGTERM)  # Faust's own graceful shutdown

    worker = faust.Worker(app, loglevel="warning", quiet=True)
    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()
    return {}  # written from inside the agent


def child_ingest(spec: dict[str, Any]) -> dict[str, object]:
    """The real IngestLoop (consumer, validation, Lua apply, DLQ flush, commit)."""
    from confluent_kafka import Message

    from tierflow.agents.ingest import AppliedBatch, IngestLoop
    from tierflow.pipeline.config.context import Context
    from tierflow.pipeline.config.domain import load_config
    from tierflow.pipeline.kafka.publisher import Publisher
    from tierflow.pipeline.state.store import StateStore, connect

    settings = child_settings(spec)
    ctx = Context(settings, load_config(settings.config_path))
    clock = Meter(spec["records"], cap_s=math.inf)  # the ingest-only runs go to the end
    stop = threading.Event()

    class TimedLoop(IngestLoop):
        def process(self, messages: list[Message]) -> AppliedBatch:
            clock.begin()
            batch = super().process(messages)
            if clock.add(len(messages), len(batch.events)):
                stop.set()
            return batch

    publisher = Publisher(settings.kafka, ctx.config.worker.delivery_timeout_s)
    store = StateStore.of(connect(settings.redis_url), ctx.config.state)
    loop = TimedLoop(ctx, store, publisher)
    loop.run(stop)
    publisher.close()
    return clock.result(applied=loop.stats.applied, rejected=loop.stats.rejected)


CHILDREN = {"raw": child_raw, "faust": child_faust, "ingest": child_ingest}


def write_result(spec: dict[str, Any], result: dict[str, object]) -> None:
    Path(spec["result_path"]).write_bytes(orjson.dumps(result))


def run_child(spec: dict[str, Any]) -> int:
    work = CHILDREN[spec["contender"]]
    if spec.get("profile"):
        from pyinstrument import Profiler

        with Profiler() as profiler:
            result = work(spec)
        Path(spec["profile"]).write_text(profiler.output_text(unicode=True, show_all=False))
    else:
        result = work(spec)
    if result:
        write_result(spec, result)
    return 0


# ------------------------------------------------------------------ parent --


def log(message: str) -> None:
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


def synthetic_events(n: int, users: int, seed: int, run: str) -> list[tuple[str, str, bytes]]:
    """n events of a realistic population, shuffled as apps' events interleave on arrival."""
    from tierflow.pipeline.demo.synth import Population

    population = Population(users, HISTORY_DAYS, int(time.time() * 1000), seed=seed, run=run)
    events = list(islice(population.events(), n))
    if len(events) < n:
        raise SystemExit(f"{users} users yield only {len(events)} events; raise --users")
    random.Random(seed).shuffle(events)
    return [(str(e["type"]), str(e["user_id"]), orjson.dumps(e)) for e in events]


def produce(settings: Settings, name: str, events: list[tuple[str, str, bytes]], batch: int) -> Dataset:
    from tierflow.pipeline.kafka.sender import EventSender
    from tierflow.pipeline.kafka.topics import ensure_topics

    ensure_topics(settings)
    sender = EventSender(settings, batch=batch)
    for event_type, user_id, raw in events:
        sender.send(event_type, user_id, raw)
    report = sender.close()
    if report.failed:
        raise SystemExit(f"producing the {name} data set failed: {report.errors}")
    return Dataset(name, settings.topics.prefix, report.records, report.events)


def contender_command(contender: str, spec: dict[str, Any], quix_python: str) -> list[str]:
    payload = json.dumps(spec)
    if contender.startswith("quix"):
        return [quix_python, "-m", "bench.quix_ingest", payload]
    return [sys.executable, "-m", "bench.ingest", "--child", payload]


def run_contender(
    contender: str, dataset: Dataset, repeat: int, settings: Settings, workdir: Path,
    quix_python: str, timeout: float, profile_dir: Path | None,
) -> Run:
    run = Run(contender, dataset.name, repeat)
    stem = f"{contender}-{dataset.name}-{repeat}"
    spec = {
        "contender": contender, "prefix": dataset.prefix,
        "group": f"{dataset.prefix}{contender}-{repeat}",
        "redis_url": settings.redis_url, "partitions": settings.partitions,
        "records": dataset.records, "events": dataset.events,
        "result_path": str(workdir / f"{stem}.json"),
        "profile": str(profile_dir / f"{stem}.txt") if profile_dir else None,
    }
    log_path = workdir / f"{stem}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            contender_command(contender, spec, quix_python), cwd=ROOT, env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    result_path = Path(spec["result_path"])
    if not result_path.exists():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        run.error = f"exit {proc.returncode}: " + " | ".join(tail)
        return run
    result = orjson.loads(result_path.read_bytes())
    run.records, run.events = result["records"], result["events"]
    run.seconds, run.startup_s = result["seconds"], result["startup_s"]
    run.applied = result.get("applied")
    if run.applied is not None and run.applied != dataset.events:
        run.error = f"applied {run.applied} of {dataset.events} events"
    return run


def summarize(runs: list[Run], datasets: Sequence[Dataset], contenders: Sequence[str]) -> list[Summary]:
    rows: list[Summary] = []
    for dataset in datasets:
        by_contender: dict[str, Summary] = {}
        for contender in contenders:
            mine = [r for r in runs if r.dataset == dataset.name and r.contender == contender]
            good = [r for r in mine if r.error is None and r.seconds]
            errors = sorted({r.error for r in mine if r.error})
            rates = [r.events_per_s for r in good]
            seconds = statistics.median([r.seconds for r in good]) if good else 0.0
            row = Summary(
                contender, CONTENDERS[contender], dataset.name, len(good),
                records_per_s=dataset.records / seconds if seconds else 0.0,
                events_per_s=dataset.events / seconds if seconds else 0.0,
                events_per_s_min=min(rates, default=0.0), events_per_s_max=max(rates, default=0.0),
                startup_s=statistics.median([r.startup_s or 0.0 for r in good]) if good else 0.0,
                errors=errors,
            )
            by_contender[contender] = row
            rows.append(row)
        for row in by_contender.values():
            for base, attr in (("faust", "vs_faust"), ("quix", "vs_quix")):
                reference = by_contender.get(base)
                if reference and reference.events_per_s and row.events_per_s:
                    setattr(row, attr, row.events_per_s / reference.events_per_s)
    return rows


def table(rows: list[Summary], datasets: Sequence[Dataset]) -> str:
    def ratio(value: float | None) -> str:
        return f"{value:.2f}x" if value is not None else "-"

    shapes = {d.name: f"{d.records:,} records, {d.events_per_record:.1f} ev/rec" for d in datasets}
    header = (f"{'data set':<10} {'contender':<38} {'records/s':>10} {'events/s':>10} "
              f"{'vs Faust':>9} {'vs Quix':>8} {'start s':>7}  events/s min-max (runs)")
    lines = [header, "-" * len(header)]
    for row in rows:
        if not row.runs:
            lines.append(f"{row.dataset:<10} {row.label:<38} failed: {'; '.join(row.errors)[:200]}")
            continue
        lines.append(
            f"{row.dataset:<10} {row.label:<38} {row.records_per_s:>10,.0f} {row.events_per_s:>10,.0f} "
            f"{ratio(row.vs_faust):>9} {ratio(row.vs_quix):>8} {row.startup_s:>7.1f}  "
            f"{row.events_per_s_min:,.0f}-{row.events_per_s_max:,.0f} ({row.runs})"
            + (f"  [{'; '.join(row.errors)[:120]}]" if row.errors else "")
        )
    lines.append("")
    lines += [f"{name}: {shape}" for name, shape in shapes.items()]
    return "\n".join(lines)


def quix_available(quix_python: str) -> str | None:
    """None if the interpreter can import quixstreams, else why not."""
    if not Path(quix_python).exists():
        return f"{quix_python} does not exist (see bench/README.md to create it)"
    probe = subprocess.run([quix_python, "-c", "import quixstreams"], capture_output=True, text=True)
    if probe.returncode:
        return probe.stderr.strip().splitlines()[-1]
    return None


def faust_available() -> str | None:
    """None if Faust's Kafka client can read this project's records, else why not."""
    from aiokafka.codec import has_lz4

    if not has_lz4():  # the bulk producer compresses with lz4
        return "aiokafka cannot decompress lz4 records: pip install 'aiokafka[lz4]'"
    return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per data set")
    parser.add_argument("--users", type=int, default=None,
                        help=f"population size (default events/{EVENTS_PER_USER_GUESS})")
    parser.add_argument("--batch", type=int, default=20, help="events per batch record")
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender; the median is reported")
    parser.add_argument("--contenders", default=",".join(DEFAULT_CONTENDERS),
                        help=f"comma-separated, from {', '.join(CONTENDERS)}")
    parser.add_argument("--datasets", default="single,batch", help="single, batch or both")
    parser.add_argument("--redis-db", type=int, default=7, help="Redis db flushed before every run")
    parser.add_argument("--quix-python", default=os.environ.get("BENCH_QUIX_PYTHON", DEFAULT_QUIX_PYTHON),
                        help="interpreter with quixstreams installed")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one contender run may take")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", type=Path, default=None,
                        help="write a pyinstrument profile per run into this directory (slows the runs)")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete this run's topics")
    parser.add_argument("--json", type=Path, default=None, help="write runs and summary here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return run_child(json.loads(args.child))

    import redis

    from tierflow.infra.services import up

    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in contenders if c not in CONTENDERS]
    if unknown:
        raise SystemExit(f"unknown contenders: {', '.join(unknown)}")
    dataset_names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if set(dataset_names) - {"single", "batch"}:
        raise SystemExit("--datasets takes single, batch or both")
    missing = {
        c: quix_available(args.quix_python) if c.startswith("quix") else faust_available()
        for c in contenders if c.startswith("quix") or c == "faust"
    }

    base = Settings.from_env()
    settings = replace(base, redis_url=base.redis_url.rsplit("/", 1)[0] + f"/{args.redis_db}")
    up(settings)
    tag = uuid.uuid4().hex[:8]
    run_prefix = f"bench-{tag}-"
    users = args.users or max(args.events // EVENTS_PER_USER_GUESS, 1)

    started = time.monotonic()
    log(f"generating {args.events:,} events for {users:,} users")
    events = synthetic_events(args.events, users, args.seed, run=tag)
    datasets: list[Dataset] = []
    for name in dataset_names:
        shaped = replace(settings, topics=Topics(prefix=f"{run_prefix}{name[0]}."))
        dataset = produce(shaped, name, events, 1 if name == "single" else args.batch)
        log(f"produced {name}: {dataset.records:,} records, {dataset.events:,} events "
            f"({dataset.events_per_record:.1f}/record)")
        datasets.append(dataset)
    distinct_users = len({user for _, user, _ in events})
    del events

    client = redis.Redis.from_url(settings.redis_url)
    runs: list[Run] = []
    try:
        with tempfile.TemporaryDirectory(prefix="tierflow-bench-") as tmp:
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
            for repeat in range(args.repeats):
                # Rotate the order so no contender always runs first (cold caches) or last.
                order = contenders[repeat % len(contenders):] + contenders[:repeat % len(contenders)]
                for dataset in datasets:
                    for contender in order:
                        if missing.get(contender):
                            runs.append(Run(contender, dataset.name, repeat, error=missing[contender]))
                            continue
                        client.flushdb()
                        run = run_contender(contender, dataset, repeat, settings, Path(tmp),
                                            args.quix_python, args.timeout, args.profile)
                        runs.append(run)
                        state = run.error or f"{run.events_per_s:,.0f} events/s in {run.seconds:.2f}s"
                        log(f"run {repeat + 1}/{args.repeats} {dataset.name:<6} {contender:<8} {state}")
    finally:
        client.flushdb()
        client.close()
        if not args.keep_topics:
            from tierflow.pipeline.kafka.topics import delete_topics

            delete_topics(settings, run_prefix)

    rows = summarize(runs, datasets, contenders)
    print(table(rows, datasets))
    meta = {
        "events": args.events, "users": distinct_users, "batch": args.batch, "repeats": args.repeats,
        "partitions": settings.partitions, "cpus": os.cpu_count(), "python": sys.version.split()[0],
        "wall_s": round(time.monotonic() - started, 1),
        "datasets": [asdict(d) | {"events_per_record": d.events_per_record} for d in datasets],
    }
    print(f"\n{meta['cpus']} CPUs, {meta['partitions']} partitions per topic, "
          f"{distinct_users:,} users, wall {meta['wall_s']}s")
    if args.json:
        args.json.write_bytes(orjson.dumps(
            {"meta": meta, "summary": [asdict(r) for r in rows], "runs": [asdict(r) for r in runs]},
            option=orjson.OPT_INDENT_2,
        ))
    return 0 if all(r.runs for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
