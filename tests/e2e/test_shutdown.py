"""SIGTERM ends a real worker process within 10 s in every state: Kafka not there
at start, the broker gone while it runs, Redis down, mid-batch. After a
mid-batch stop, what was committed was durable: a restart ends exact."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fixtures.checks import assert_state_matches
from tests.fixtures.worker import (
    WorkerProcess,
    free_port,
    population_events,
    send_events,
    wait_part_way,
    wait_processed,
)
from tierflow.pipeline.config.settings import KafkaSettings, Settings
from tierflow.pipeline.kafka import lag
from tierflow.pipeline.kafka.topics import ensure_topics
from tierflow.pipeline.state.summary import DAY_MS

pytestmark = pytest.mark.service

# The promise to operators (an orchestrator's grace period is often 10 s).
STOPS_WITHIN_S = 10.0


def terminate(worker: WorkerProcess) -> int:
    """SIGTERM, then wait for the exit; fail if the worker is still there after the promise."""
    assert worker.proc is not None and worker.alive, worker.log_tail()
    worker.proc.send_signal(signal.SIGTERM)
    try:
        return worker.proc.wait(STOPS_WITHIN_S)
    except subprocess.TimeoutExpired:
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)
        pytest.fail(f"the worker ignored SIGTERM for {STOPS_WITHIN_S} s; log:\n{worker.log_tail()}")


def wait_for_line(worker: WorkerProcess, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in worker.log_path.read_text(errors="replace"):
        assert worker.alive, worker.log_tail()
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{worker.log_tail()}"
        time.sleep(0.2)


def test_sigterm_while_kafka_is_not_there(base_settings: Settings, tmp_path: Path) -> None:
    closed = replace(base_settings, kafka=KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}"))
    worker = WorkerProcess(closed, tmp_path / "worker.log")
    worker.start()
    wait_for_line(worker, "does not answer; trying again")  # waiting, not crashed
    assert terminate(worker) == 0


def test_sigterm_after_the_broker_died(secured: Settings, tmp_path: Path) -> None:
    ensure_topics(secured)
    worker = WorkerProcess(secured, tmp_path / "worker.log", loglevel="info")
    worker.start()
    try:
        wait_for_line(worker, "ingest consuming")
        broker = int((secured.home / "kafka" / "kafka.pid").read_text())
        os.kill(broker, signal.SIGKILL)  # the `secured` fixture starts it again for later tests
        wait_for_line(worker, "Connection refused")
        terminate(worker)
    finally:
        worker.stop()


def test_sigterm_while_redis_is_down(settings: Settings, tmp_path: Path) -> None:
    down = replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    ensure_topics(down)
    worker = WorkerProcess(down, tmp_path / "worker.log", loglevel="info")
    worker.start()
    wait_for_line(worker, "ingest failed; restarting")
    assert terminate(worker) == 0


def test_sigterm_mid_batch_commits_only_what_is_durable(settings: Settings, tmp_path: Path) -> None:
    events, now_ms = population_events(users=800, days=90, seed=31, duplicate_share=0.05)
    send_events(settings, events, batch=1)
    total = sum(r.lag for r in lag.measure(settings))
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    try:
        wait_part_way(settings, worker, total)
        assert terminate(worker) == 0
        left = sum(r.lag for r in lag.measure(settings))
        assert 0 < left < total
        worker.start()
        wait_processed(settings, worker)
    finally:
        worker.stop()
    assert_state_matches(settings, events, [now_ms, now_ms - 60 * DAY_MS])
