"""Helpers for end-to-end tests: run the real worker as a process, send events."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.kafka import lag
from tierflow.pipeline.kafka.sender import EventSender
from tierflow.pipeline.kafka.topics import ensure_topics

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP=settings.kafka.bootstrap,
        REDIS_URL=settings.redis_url,
        TIERFLOW_TOPIC_PREFIX=settings.topics.prefix,
        TIERFLOW_GROUP=settings.group_id,
        TIERFLOW_PARTITIONS=str(settings.partitions),
        TIERFLOW_HOME=str(settings.home),
        TIERFLOW_CLOCK=settings.clock,
        PYTHONPATH=str(ROOT),
    )
    if settings.config_path is not None:
        env["TIERFLOW_CONFIG"] = str(settings.config_path)
    env.update(extra)
    return env


def cli(
    settings: Settings, *args: str, input: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tierflow.pipeline.cli.main", *args],
        env=env_for(settings), cwd=ROOT, input=input, capture_output=True, timeout=timeout,
    )


class WorkerProcess:
    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        # Each worker gets its own home: an embedded chDB directory is single-process.
        self.settings = replace(self.settings, home=self.log_path.parent / "home")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tierflow.pipeline.cli.main", "worker", "--loglevel", "warning"],
            env=env_for(self.settings, TIERFLOW_WEB_PORT=str(free_port())),
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@contextmanager
def running_worker(settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def send_events(settings: Settings, events: Iterable[dict], batch: int = 1) -> int:
    ensure_topics(settings)
    sender = EventSender(settings, batch=batch)
    for e in events:
        sender.send(str(e["type"]), str(e["user_id"]), orjson.dumps(e))
    report = sender.close()
    assert report.failed == 0, report.errors
    return report.records


def wait_processed(settings: Settings, worker: WorkerProcess, timeout: float = 300) -> None:
    def check_alive(_remaining: int) -> None:
        if not worker.alive:
            raise AssertionError(f"worker died; log:\n{worker.log_tail()}")

    try:
        lag.wait(settings, timeout, check_alive)
    except TimeoutError:
        raise AssertionError(f"worker did not catch up; log:\n{worker.log_tail()}") from None


def read_all(settings: Settings, topic: str, expected: int, timeout: float = 60) -> list[dict]:
    consumer = Consumer(settings.kafka.confluent(
        **{"group.id": f"{settings.group_id}-reader", "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    records: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                records.append(orjson.loads(msg.value()))
        # Anything beyond the expected count would be a duplicate dead letter.
        extra = consumer.consume(100, 2.0)
        records += [orjson.loads(m.value()) for m in extra if not m.error()]
    finally:
        consumer.close()
    if len(records) < expected:
        pytest.fail(f"only {len(records)} of {expected} records on {topic}")
    return records


def read_to_end(settings: Settings, topic: str, timeout: float = 60) -> list[dict]:
    """Every record on the topic, up to its end offsets at the time of the call."""
    consumer = Consumer(settings.kafka.confluent(**{"group.id": f"{settings.group_id}-end-reader"}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions}
        todo = {p for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in todo])
        records: list[dict] = []
        deadline = time.monotonic() + timeout
        while todo:
            assert time.monotonic() < deadline, f"could not read {topic} to the end"
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            records.append(orjson.loads(msg.value()))
            if msg.offset() + 1 >= ends[msg.partition()][1]:
                todo.discard(msg.partition())
        return records
    finally:
        consumer.close()
