"""The supervisor runs work again after it fails, and stops it when asked."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import faust
import pytest
import redis

from tierflow.agents.supervisor import Supervisor, hosted


def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_failed_work_is_run_again_until_it_keeps_running() -> None:
    runs: list[int] = []
    running = threading.Event()

    def work(stop: threading.Event) -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise ConnectionError("redis down")
        running.set()
        stop.wait()

    supervisor = Supervisor("test", work, backoff_s=[0.01, 0.02])
    supervisor.start()
    wait_for(running.is_set)
    assert runs == [0, 1, 2]
    supervisor.stop(5)
    assert supervisor.thread is not None and not supervisor.thread.is_alive()


def test_delays_grow_with_consecutive_failures_and_the_last_repeats() -> None:
    started: list[float] = []

    def work(stop: threading.Event) -> None:
        started.append(time.monotonic())
        raise RuntimeError("boom")

    supervisor = Supervisor("test", work, backoff_s=[0.05, 0.2])
    supervisor.start()
    wait_for(lambda: len(started) >= 4)
    supervisor.stop(5)
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert gaps[0] >= 0.05
    assert all(gap >= 0.2 for gap in gaps[1:3])


def test_stop_interrupts_the_backoff_wait() -> None:
    def work(stop: threading.Event) -> None:
        raise RuntimeError("boom")

    supervisor = Supervisor("test", work, backoff_s=[60])
    supervisor.start()
    wait_for(lambda: supervisor.failures == 1)
    began = time.monotonic()
    supervisor.stop(5)
    assert time.monotonic() - began < 2


def test_a_service_outage_is_one_line_and_a_bug_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    failures = iter([redis.ConnectionError("Error 111 connecting to 127.0.0.1:6399"), KeyError("bug")])

    def work(stop: threading.Event) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        stop.wait()

    supervisor = Supervisor("test", work, backoff_s=[0.01])
    with caplog.at_level("WARNING", logger="tierflow.supervisor"):
        supervisor.start()
        wait_for(lambda: supervisor.failures == 2)
        supervisor.stop(5)
    outage, bug = caplog.records
    assert outage.levelname == "WARNING" and outage.exc_info is None
    assert outage.getMessage() == ("test failed; restarting in 0.01s: a service is unavailable"
                                   " (ConnectionError: Error 111 connecting to 127.0.0.1:6399)")
    assert bug.levelname == "ERROR" and bug.exc_info is not None


def test_every_hosted_work_is_told_to_stop_when_the_app_starts_stopping() -> None:
    """The app stops its services in turn; work waiting for its own turn would go on
    taking batches while an earlier service (the archive) finishes its insert."""
    app = faust.App("tierflow-test-supervisor", broker="kafka://127.0.0.1:1")
    ended: set[str] = set()

    def work_named(name: str):
        def work(stop: threading.Event) -> None:
            stop.wait()
            ended.add(name)
        return work

    supervisors = [Supervisor(name, work_named(name), backoff_s=[0.01]) for name in ("ingest", "archive")]
    services = [hosted(app, supervisor, 5, lambda: None) for supervisor in supervisors]
    for supervisor in supervisors:
        supervisor.start()
    asyncio.run(app.on_stop())
    wait_for(lambda: ended == {"ingest", "archive"})  # before any service's own stop
    for service in services:
        asyncio.run(service().on_stop())
    assert all(s.thread is not None and not s.thread.is_alive() for s in supervisors)
