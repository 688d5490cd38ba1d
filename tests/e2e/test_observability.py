"""Operations through a real worker: /metrics counts what was sent and what the worker
published, behind the dashboard token; /healthz answers probes without one, 503 with
the reason while its Redis is down and 200 once it is back; the JSON log has one
object per line and no traceback for the outage."""

from __future__ import annotations

import secrets
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.checks import Published, settled
from tests.fixtures.services import TEST_REDIS_DB
from tests.fixtures.worker import (
    WorkerProcess,
    free_port,
    population_events,
    running_worker,
    send_events,
    wait_processed,
)
from tierflow.infra import redis
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.kafka.sender import EventSender
from tierflow.pipeline.kafka.topics import ensure_topics
from tierflow.schemas.events import TOPIC_OF
from tierflow.schemas.tier_changes import EVENT_REASONS

pytestmark = pytest.mark.service

# Lag measured often, so the test need not wait for the default interval.
CONFIG = "[worker]\nlag_interval_s = 0.5\n"
# Redis alone is under test in the health test: no archive.
HEALTH_CONFIG = "[archive]\nenabled = false\n"
WAIT_S = 120
# Bad records sent, by the reason the worker gives them.
NOT_JSON = 3
KEY_MISMATCH = 2

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
T = TypeVar("T")


def get(worker: WorkerProcess, path: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{worker.web_port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(worker: WorkerProcess, token: str) -> Samples:
    status, body = get(worker, "/metrics", token)
    assert status == 200, body
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def by_label(samples: Samples, name: str, *labels: str) -> Counter:
    """The samples of one metric, keyed by the values of `labels` (one label: the value itself)."""
    found: Counter = Counter()
    for (sample, pairs), value in samples.items():
        if sample == name and value:
            values = tuple(dict(pairs)[label] for label in labels)
            found[values[0] if len(values) == 1 else values] += int(value)
    return found


def until(condition: Callable[[], T | None], worker: WorkerProcess, what: str, timeout_s: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert worker.alive, worker.log_tail()
        assert time.monotonic() < deadline, f"{what}; log:\n{worker.log_tail()}"
        time.sleep(0.5)
    return result


def send_bad_records(settings: Settings, valid: dict) -> Counter:
    """Records the worker must dead-letter, by the reason it must give."""
    sender = EventSender(settings)
    for n in range(NOT_JSON):
        sender.send("purchase", f"bad{n}", b"{not json")
    for n in range(KEY_MISMATCH):
        sender.send(str(valid["type"]), f"someone-else-{n}", orjson.dumps(valid))
    report = sender.close()
    assert report.failed == 0, report.errors
    return Counter({"not_json": NOT_JSON, "key_mismatch": KEY_MISMATCH})


def test_metrics_count_what_was_sent_and_published(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "tierflow.toml"
    path.write_text(CONFIG)
    token = secrets.token_hex(16)
    settings = replace(settings, config_path=path, dashboard_token=token)
    config = load_config(path)
    events, _now = population_events(users=40, days=30, seed=14, duplicate_share=0.0)
    topics = settings.topics
    with running_worker(settings, tmp_path) as worker:
        send_events(settings, events)
        bad = send_bad_records(settings, events[0])
        wait_processed(settings, worker)
        until(lambda: settled(settings, config), worker, "outputs did not settle")

        # Only probes pass without the token.
        assert get(worker, "/metrics")[0] == 401
        status, body = get(worker, "/healthz")
        assert status == 200, body
        assert orjson.loads(body) == {"status": "ok", "checks": {
            "ingest": "ok", "kafka": "ok", "redis": "ok", "archive": "ok"}}

        sent = Counter(topics.input(TOPIC_OF[str(event["type"])]) for event in events)
        samples = scrape(worker, token)
        assert by_label(samples, "tierflow_events_processed_total", "topic") == sent
        assert by_label(samples, "tierflow_dead_letters_total", "reason") == bad
        assert samples[("tierflow_ingest_records_total", ())] == len(events) + sum(bad.values())
        assert samples[("tierflow_events_applied_total", ())] == len(events)

        def published_match() -> Samples | None:
            """Tier changes and reward records as on the topics (the timer may add some meanwhile)."""
            published = Published(settings)
            now = scrape(worker, token)
            changes = [value for _, _, value in published.changes]
            grants = [value for _, _, value in published.grants]
            same = (
                by_label(now, "tierflow_tier_changes_total", "dimension") == Counter(c["dimension"] for c in changes)
                and by_label(now, "tierflow_reward_records_total", "campaign", "kind")
                == Counter((g["campaign"] or "none", g["kind"]) for g in grants)
                and now[("tierflow_event_to_tier_change_seconds_count", ())]
                == sum(1 for c in changes if c["reason"] in EVENT_REASONS)
            )
            return now if same and changes and grants else None

        samples = until(published_match, worker, "the metrics did not match the output topics")
        for stage in ("state", "tiers", "rewards", "outputs"):
            assert samples[("tierflow_stage_batch_seconds_count", (("stage", stage),))] > 0, stage

        def lag_measured() -> Samples | None:
            now = scrape(worker, token)
            lags = {pairs: value for (name, pairs), value in now.items() if name == "tierflow_consumer_lag"}
            return now if len(lags) == len(topics.inputs) * settings.partitions else None

        samples = until(lag_measured, worker, "no lag for every input partition")
        lags = {dict(pairs)["topic"] for (name, pairs), _ in samples.items() if name == "tierflow_consumer_lag"}
        assert lags == set(topics.inputs)
        assert sum(value for (name, _), value in samples.items() if name == "tierflow_consumer_lag") == 0


def test_healthz_follows_redis_down_and_back(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A private Redis, started as `tierflow up` starts one; the shared one stays up.
    private = replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/{TEST_REDIS_DB}", home=tmp_path / "svc")
    assert redis.start(private) == "started"
    path = tmp_path / "tierflow.toml"
    path.write_text(HEALTH_CONFIG)
    monkeypatch.setenv("TIERFLOW_LOG_FORMAT", "json")
    worker = WorkerProcess(replace(settings, redis_url=private.redis_url, config_path=path),
                           tmp_path / "worker" / "worker.log", loglevel="info")
    worker.log_path.parent.mkdir()
    ensure_topics(settings)

    def health() -> tuple[int, dict]:
        status, body = get(worker, "/healthz")
        return status, orjson.loads(body)

    def health_is(status: int) -> Callable[[], dict | None]:
        def check() -> dict | None:
            got, body = health()
            return body if got == status else None

        return check

    def answers() -> bool:
        try:
            health()
        except OSError:
            return False  # not listening yet
        return True

    try:
        worker.start()
        until(answers, worker, "the worker's web server did not answer")
        until(health_is(200), worker, "healthz never said ok")

        redis.stop(private)
        body = until(health_is(503), worker, "healthz stayed 200")
        assert body["status"] == "unavailable"
        assert body["checks"]["redis"] == "unreachable" and body["checks"]["kafka"] == "ok"
        assert "redis: unreachable" in body["reason"]
        assert str(private.redis_url.rsplit(":", 1)[-1]) not in orjson.dumps(body).decode()  # no address for probes

        assert redis.start(private) == "started"
        body = until(health_is(200), worker, "healthz did not recover")
        assert body["checks"] == {"ingest": "ok", "kafka": "ok", "redis": "ok"}
    finally:
        worker.stop()
        redis.stop(private)

    lines = [line for line in worker.log_path.read_text().splitlines() if line.strip()]
    entries = [orjson.loads(line) for line in lines]  # every line one JSON object
    assert all({"ts", "level", "logger", "message"} <= entry.keys() for entry in entries)
    messages = [(entry["logger"], entry["message"]) for entry in entries]
    assert ("tierflow.health", "health: ok again") in messages
    assert any(logger == "tierflow.health" and "redis: unreachable" in message for logger, message in messages)
    # The outage is an expected condition: no traceback anywhere.
    assert [entry for entry in entries if "exc" in entry] == []
