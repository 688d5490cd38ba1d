"""Helpers for end-to-end tests: run the real worker as a process, send events."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from pipeline import lag
from pipeline.producer import EventSender
from pipeline.settings import Settings
from pipeline.topics import ensure_topics

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
        [sys.executable, "-m", "pipeline.cli", *args],
        env=env_for(settings), cwd=ROOT, input=input, capture_output=True, timeout=timeout,
    )


class WorkerProcess:
    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "worker", "--loglevel", "warning"],
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
