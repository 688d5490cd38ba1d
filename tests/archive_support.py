"""Helpers for the archive and dashboard tests: an isolated archive per test and
an independent AIPL computation over raw events (shares no code with
tierflow.pipeline.archive: its own day arithmetic, stage rules and grouping)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import msgspec
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.support import ROOT, env_for
from tests.truth import ts_ms
from tierflow.agents.archive import ArchiveThread, archive_group
from tierflow.pipeline.archive.batch import Batch, RecordSorter, insert_batch
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.ingest.validate import Limits
from tierflow.schemas.tier_changes import TierChange


def archive_context(settings: Settings, home: Path) -> Context:
    """A context whose archive is private to one test: its own chDB directory,
    or, when CLICKHOUSE_URL points at a server, its own database."""
    config = load_config()
    settings = replace(settings, home=home, clickhouse_url=os.environ.get("CLICKHOUSE_URL") or None)
    if settings.clickhouse_url:
        database = f"tierflow_t{uuid.uuid4().hex[:10]}"
        archive = msgspec.structs.replace(config.archive, database=database)
        config = msgspec.structs.replace(config, archive=archive)
    return Context(settings, config)


def drop_if_server(ctx: Context, archive: Archive) -> None:
    if ctx.settings.clickhouse_url:
        archive.backend().execute(f"DROP DATABASE IF EXISTS {ctx.config.archive.database}")


def archive_directly(ctx: Context, archive: Archive, records: Iterable[tuple[str, dict]]) -> Batch:
    """Run (topic, record) pairs through the writer's own routing and insert path, without Kafka."""
    topics = ctx.settings.topics
    sorter = RecordSorter(topics.inputs, topics.tier_changes, topics.reward_grants, Limits.of(ctx.config.ingest))
    batch = Batch()
    now_ms = int(time.time() * 1000)
    for offset, (topic, record) in enumerate(records):
        key = str(record.get("user_id", "")).encode() or None
        sorter.add(batch, topic, 0, offset, key, orjson.dumps(record), now_ms)
    insert_batch(archive.backend(), batch)
    return batch


def tier_change(user_id: str, dimension: str, old: str | None, new: str | None, reason: str,
                version: int, event_time: str | int, **fields: object) -> dict:
    """A tier.changes value as the tiering stage publishes it (checked against TierChange);
    seq, scores, points and repurchases default to a first change of a user without purchases."""
    if isinstance(event_time, int):
        event_time = datetime.fromtimestamp(event_time / 1000, UTC).isoformat()
    record = {"user_id": user_id, "dimension": dimension, "old": old, "new": new, "reason": reason,
              "version": version, "seq": version, "scores": {"r": None, "f": None, "m": None},
              "points": 0, "repurchases": 0, "event_time": event_time, **fields}
    return msgspec.to_builtins(msgspec.convert(record, TierChange))


def touch_topic(ctx: Context, event: dict) -> str:
    return ctx.settings.topics.input(str(event["type"]))


def event_day(event: dict) -> date:
    return datetime.fromtimestamp(ts_ms(event["ts"]) / 1000, UTC).date()


def categories_of(event: dict) -> set[str]:
    if event["type"] == "purchase":
        return {item["category"] for item in event["items"]}
    if event["type"] in ("cart", "browse") and event.get("category"):
        return {event["category"]}
    return set()


def engages(event: dict) -> bool:
    """Interest: an add-to-cart, any interaction, or a purchase (a cart removal alone is not)."""
    if event["type"] == "cart":
        return event["action"] == "add"
    return event["type"] in ("interaction", "purchase")


def week_of(day: date) -> date:
    return day - timedelta(days=day.isoweekday() - 1)


def aipl_truth(events: list[dict], start: date, end: date, group: str | None = None) -> dict:
    """{group: {"awareness", "interest", "purchase", "loyalty"}} (group None: key None)."""
    seen: set[tuple[str, str]] = set()
    users: dict[object, dict[str, dict]] = defaultdict(dict)
    for e in events:
        if (e["user_id"], e["event_id"]) in seen:
            continue
        seen.add((e["user_id"], e["event_id"]))
        day = event_day(e)
        if not start <= day <= end:
            continue
        keys: Iterable[object]
        if group is None:
            keys = [None]
        elif group == "channel":
            keys = [e["channel"]]
        elif group == "category":
            keys = categories_of(e)
        else:
            keys = [week_of(day)]
        for key in keys:
            state = users[key].setdefault(e["user_id"], {"engaged": False, "orders": set()})
            if engages(e):
                state["engaged"] = True
            if e["type"] == "purchase":
                state["orders"].add(e["order_id"])
    return {
        key: {
            "awareness": len(states),
            "interest": sum(1 for s in states.values() if s["engaged"]),
            "purchase": sum(1 for s in states.values() if s["orders"]),
            "loyalty": sum(1 for s in states.values() if len(s["orders"]) >= 2),
        }
        for key, states in users.items()
    }


def counts(doc: dict) -> dict:
    return {k: doc[k] for k in ("awareness", "interest", "purchase", "loyalty")}


def domain_example_population(start: date) -> Iterator[dict]:
    """50,000 aware users whose funnel is exactly the AIPL example in docs/domain.md:
    A->I 12%, I->P 31%, P->L 45% (the smallest population where all three are exact).
    Stages are spread over channels and days so each is reached in its own way."""
    aware, interested, buyers, loyal = 50_000, 6_000, 1_860, 837
    channels = ("app", "mini_program", "store", "chat")
    base = datetime(start.year, start.month, start.day, 12, tzinfo=UTC)
    for i in range(aware):
        user = f"x{i:05d}"
        ts = base + timedelta(days=i % 28, minutes=i % 600)
        common = {"user_id": user, "channel": channels[i % len(channels)]}

        def event(type_: str, n: int, when: datetime, common: dict = common, **body: object) -> dict:
            stamp = when.strftime("%Y-%m-%dT%H:%M:%S.000Z")
            return {"event_id": f"{common['user_id']}-{n}", "type": type_, "ts": stamp,
                    **common, **body}

        yield event("browse", 0, ts, page="home", category="snacks")
        if i < interested:
            if i % 2:
                yield event("cart", 1, ts, action="add", sku="SN001", category="snacks", qty=1,
                            price=9.9)
            else:
                yield event("interaction", 1, ts, kind="coupon_claim")
        line = {"sku": "SN001", "category": "snacks", "qty": 1, "price": 9.9}
        for n in range(2 if i < loyal else 1 if i < buyers else 0):
            yield event("purchase", 2 + n, ts + timedelta(hours=n), order_id=f"{user}-o{n}",
                        amount=9.9, currency="CNY", items=[line])


def with_archive_settings(ctx: Context, **changes: object) -> Context:
    archive = msgspec.structs.replace(ctx.config.archive, **changes)
    return Context(ctx.settings, msgspec.structs.replace(ctx.config, archive=archive))


def archive_lag(ctx: Context) -> int:
    """Records on the archive's topics not yet committed by its consumer group."""
    probe = Consumer(ctx.settings.kafka.confluent(**{"group.id": archive_group(ctx)}))
    try:
        topics = [*ctx.settings.topics.inputs, ctx.settings.topics.tier_changes,
                  ctx.settings.topics.reward_grants]
        metadata = probe.list_topics(timeout=10).topics
        tps = [TopicPartition(t, p) for t in topics if t in metadata for p in metadata[t].partitions]
        total = 0
        for tp in probe.committed(tps, timeout=10):
            low, high = probe.get_watermark_offsets(tp, timeout=10)
            total += high - (tp.offset if tp.offset >= 0 else low)
        return total
    finally:
        probe.close()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.2)


@contextmanager
def running_archive(ctx: Context, archive: Archive) -> Iterator[ArchiveThread]:
    thread = ArchiveThread(ctx, archive)
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


def produce(ctx: Context, records: Iterable[tuple[str, bytes | None, bytes | None]]) -> int:
    """(topic, key, value) records, delivered before returning."""
    producer = Producer(ctx.settings.kafka.confluent(**{"enable.idempotence": True}))
    failures: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    n = 0
    for topic, key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=delivered)
        producer.poll(0)
        n += 1
    assert producer.flush(60) == 0
    assert not failures, failures
    return n


def cli_env(ctx: Context, tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for a `tierflow` subprocess that sees this test's archive."""
    env = env_for(ctx.settings, **extra)
    env.pop("CLICKHOUSE_URL", None)
    if ctx.settings.clickhouse_url:
        env["CLICKHOUSE_URL"] = ctx.settings.clickhouse_url
        config = tmp_path / "archive-test.toml"
        config.write_text(f'[archive]\ndatabase = "{ctx.config.archive.database}"\n')
        env["TIERFLOW_CONFIG"] = str(config)
    return env


def tierflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tierflow.pipeline.cli.main", *args], env=env, cwd=ROOT,
                          capture_output=True, timeout=120)


@contextmanager
def dashboard_process(env: dict[str, str], port: int, *args: str) -> Iterator[str]:
    """`tierflow dashboard` on loopback; yields its base URL once it answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierflow.pipeline.cli.main", "dashboard", "--host", "127.0.0.1",
         "--port", str(port), *args],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise AssertionError(f"tierflow dashboard exited {proc.returncode}: {out}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False

        wait_until(answers, "the dashboard answers", timeout=60)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get_json(url: str, token: str | None = None) -> tuple[int, object]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())
