"""Services that die under load, through a real worker process: a private Redis
(append-only file, everysec, as `tierflow up` runs it) and a private Kafka broker
are each killed with SIGKILL part-way through a steady stream and started again on
the same data directory. The worker keeps running and recovers on its own. Then the
state equals the batch truth, and tier.changes and reward.grants (read_committed)
hold every record once. The worker's memory stays flat over the stream."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tests.fixtures.checks import Published, assert_state_matches, settled
from tests.fixtures.services import TEST_REDIS_DB
from tests.fixtures.worker import WorkerProcess, free_port, population_events, send_events
from tierflow.infra import kafka, redis
from tierflow.infra.process import alive
from tierflow.pipeline.config.domain import Config, load_config
from tierflow.pipeline.config.settings import KafkaSettings, Settings
from tierflow.pipeline.kafka import lag
from tierflow.pipeline.kafka.topics import ensure_topics
from tierflow.pipeline.rewards.engine import RewardEngine
from tierflow.pipeline.state.store import connect
from tierflow.pipeline.state.summary import DAY_MS
from tierflow.pipeline.tiering.store import TierStore

# The events go out in CHUNKS, one every CHUNK_PAUSE_S. The service dies after KILL_AT
# chunks and stays down OUTAGE_S before it is started again; the stream goes on meanwhile
# (the events wait in the sender's queue, or in the topics).
CHUNKS = 40
CHUNK_PAUSE_S = 0.5
KILL_AT = CHUNKS // 3
OUTAGE_S = 3.0
# The worker's resident memory at the end of the stream, against a sample taken once
# it has warmed up (WARM_AT chunks in; before that it steps up by a third, with the first
# rounds of every stage): a generous bound, that a leak per record breaks.
WARM_AT = CHUNKS // 2
RSS_GROWTH_BOUND = 1.3
# No archive: it is not under test here, and the machine is shared.
CONFIG = "[archive]\nenabled = false\n"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def sigkill_pidfile(pidfile: Path) -> None:
    """SIGKILL the service whose pid is in `pidfile`, and wait until it is gone."""
    pid = int(pidfile.read_text().strip())
    assert alive(pid), f"{pidfile}: {pid} is not running"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while alive(pid):
        assert time.monotonic() < deadline, f"{pid} outlived SIGKILL"
        time.sleep(0.05)


class Run:
    """A worker under a steady stream of a population's events; `kill` and `restart`
    one service once the stream is KILL_AT chunks in."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        path = tmp_path / "tierflow.toml"
        path.write_text(CONFIG)
        self.settings = replace(settings, config_path=path)
        self.config: Config = load_config(path)
        self.events, self.now_ms = population_events(users=800, days=60, seed=41, duplicate_share=0.05)
        self.worker = WorkerProcess(self.settings, tmp_path / "worker" / "worker.log")
        self.worker.log_path.parent.mkdir()
        self.chunks_sent = 0
        self.warm_rss = 0
        self.kill_moment = threading.Event()

    @property
    def worker_pid(self) -> int:
        assert self.worker.proc is not None
        return self.worker.proc.pid

    def feed(self) -> None:
        for n in range(CHUNKS):
            if n == KILL_AT:
                self.kill_moment.set()
            if n == WARM_AT:
                self.warm_rss = rss_kib(self.worker_pid)
            send_events(self.settings, self.events[n::CHUNKS], create_topics=False)
            self.chunks_sent = n + 1
            time.sleep(CHUNK_PAUSE_S)

    def alive(self, _remaining: int = 0) -> None:
        assert self.worker.alive, self.worker.log_tail()

    def through(self, kill: Callable[[], None], restart: Callable[[], None]) -> dict[str, float]:
        """Stream, kill and restart the service mid-stream, wait until the worker has
        caught up and its outputs settled; the figures."""
        ensure_topics(self.settings)
        self.worker.start()
        feeder = threading.Thread(target=self.feed, daemon=True)
        figures: dict[str, float] = {}
        try:
            feeder.start()
            assert self.kill_moment.wait(180), "the stream did not get going"
            self.alive()
            kill()
            time.sleep(OUTAGE_S)
            started = time.monotonic()
            restart()
            figures["restart_s"] = time.monotonic() - started
            feeder.join(300)
            assert self.chunks_sent == CHUNKS
            started = time.monotonic()
            lag.wait(self.settings, 300, self.alive)
            figures["catch_up_s"] = time.monotonic() - started
            before, deadline = None, time.monotonic() + 120
            while (sizes := settled(self.settings, self.config)) is None or sizes != before:
                assert time.monotonic() < deadline, "outputs did not settle:\n" + self.worker.log_tail()
                before = sizes
                time.sleep(2)
            self.alive()
            figures["rss_warm_mib"] = self.warm_rss / 1024
            figures["rss_end_mib"] = rss_kib(self.worker_pid) / 1024
        finally:
            self.worker.stop()
        return figures

    def check(self, figures: dict[str, float]) -> None:
        """Exact state, every output record once and none missing, flat memory."""
        assert_state_matches(self.settings, self.events, [self.now_ms, self.now_ms - 30 * DAY_MS])
        published = Published(self.settings)
        changes = [value for _, _, value in published.changes]
        grants = [value for _, _, value in published.grants]
        keys = Counter((c["user_id"], c["dimension"], c["version"]) for c in changes)
        assert [k for k, n in keys.items() if n > 1] == []
        assert [k for k, n in Counter(g["record_id"] for g in grants).items() if n > 1] == []
        # Nothing lost: per user and dimension, versions 1..n, as many as the store counts;
        # every grant of the ledger is on the topic.
        client = connect(self.settings.redis_url)
        tiers, engine = TierStore(client, self.config), RewardEngine(client, self.config.rewards)
        versions: dict[tuple[str, str], list[int]] = defaultdict(list)
        for user, dimension, version in keys:
            versions[(user, dimension)].append(version)
        for user in {e["user_id"] for e in self.events}:
            for dimension, stored in tiers.versions(user).items():
                assert sorted(versions.get((user, dimension), [])) == list(range(1, stored + 1)), (user, dimension)
        record_ids = {g["record_id"] for g in grants}
        for user in engine.ledger.users():
            assert not {r.record_id for r in engine.ledger.grants(user)} - record_ids, user
        assert changes and grants
        print(f"\n{len(self.events)} events; tier.changes {len(changes)}, reward.grants {len(grants)}; "
              + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
        assert figures["rss_end_mib"] < figures["rss_warm_mib"] * RSS_GROWTH_BOUND, figures


def test_redis_killed_mid_stream_and_restarted_on_its_append_only_file(
    settings: Settings, tmp_path: Path
) -> None:
    # A private Redis, started as `tierflow up` starts one (append-only file, everysec).
    private = replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/{TEST_REDIS_DB}", home=tmp_path / "svc")
    assert redis.start(private) == "started"
    run = Run(replace(settings, redis_url=private.redis_url), tmp_path)
    try:
        figures = run.through(
            kill=lambda: sigkill_pidfile(private.home / "redis" / "redis.pid"),
            restart=lambda: redis.start(private),
        )
        run.check(figures)
    finally:
        redis.stop(private)


def _broker_ports(brokers: int = 1) -> int:
    """A free port followed by the 2 * brokers - 1 free ports of the other listeners."""
    return free_port(span=2 * brokers)


def _private_home(tmp_path: Path) -> Path:
    home = tmp_path / "svc"
    home.mkdir()
    # Share the jar cache with the default home instead of copying 45 MB again.
    (home / "cache").symlink_to(kafka.ensure_jars(Settings.from_env().home).parents[1])
    return home


def test_broker_killed_mid_stream_and_restarted_on_its_log(settings: Settings, tmp_path: Path) -> None:
    home = _private_home(tmp_path)
    private = replace(settings, kafka=KafkaSettings(bootstrap=f"127.0.0.1:{_broker_ports()}"), home=home)
    started = time.monotonic()
    assert kafka.start(private) == "started"
    first_start_s = time.monotonic() - started
    run = Run(replace(settings, kafka=private.kafka), tmp_path)
    try:
        figures = run.through(
            kill=lambda: sigkill_pidfile(home / "kafka" / "kafka.pid"),
            restart=lambda: kafka.start(private),
        )
        figures["broker_first_start_s"] = first_start_s
        run.check(figures)
    finally:
        kafka.stop(private)


def test_one_broker_of_three_killed_for_good_with_replication_3(settings: Settings, tmp_path: Path) -> None:
    """A local 3-broker KRaft cluster, every topic with 3 replicas (2 in sync): the first
    broker (the one the bootstrap names first) dies mid-stream and never comes back."""
    home = _private_home(tmp_path)
    port = _broker_ports(brokers=3)
    bootstrap = ",".join(f"127.0.0.1:{port + 2 * i}" for i in range(3))
    cluster = replace(settings, kafka=KafkaSettings(bootstrap=bootstrap), home=home, replication=3)
    assert kafka.start(cluster, brokers=3) == "started"
    run = Run(replace(settings, kafka=cluster.kafka, replication=3), tmp_path)
    try:
        figures = run.through(kill=lambda: sigkill_pidfile(kafka.nodes(cluster, 3)[0].root / "kafka.pid"),
                              restart=lambda: None)
        run.check(figures)
    finally:
        kafka.stop(cluster)
