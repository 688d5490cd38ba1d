"""One owner for the embedded archive, and reading it while someone holds it:
`tierflow sql` directly and through the owning process (tokens, refusals, one-line
errors), dedup tokens on the real engine, and two real workers where the owner is
killed with -9 mid-stream: the standby takes over and the archive equals what was
sent and published, nothing lost, nothing doubled."""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from tests.fixtures.archive import (
    aipl_truth,
    archive_context,
    archive_directly,
    archive_lag,
    cli_env,
    counts,
    dashboard_process,
    event_day,
    get_json,
    tierflow,
    touch_topic,
    wait_until,
)
from tests.fixtures.checks import Published
from tests.fixtures.worker import WorkerProcess, env_for, free_port, population_events, send_events
from tierflow.pipeline.archive import aipl
from tierflow.pipeline.archive.backend import ArchiveQueryError
from tierflow.pipeline.archive.batch import Batch, insert_batch
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.archive.owner import read_owner
from tierflow.pipeline.archive.remote import SQL_PATH, TOKEN_HEADER
from tierflow.pipeline.archive.rows import TOUCH_COLUMNS
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.demo.synth import Population
from tierflow.pipeline.kafka import lag
from tierflow.pipeline.kafka.topics import ensure_topics

EMBEDDED_ONLY = pytest.mark.skipif(bool(os.environ.get("CLICKHOUSE_URL")), reason="embedded chDB only")
UNIQUE_EVENTS = "SELECT count() AS n FROM (SELECT 1 FROM touch_events GROUP BY user_id, event_id)"


def events(users: int, seed: int) -> list[dict]:
    return list(Population(users, 30, int(time.time() * 1000), seed=seed, run=f"o{seed}").events())


def test_the_same_batch_inserted_twice_is_stored_once(ctx: Context, archive: Archive) -> None:
    """The deduplication token: no FINAL, no GROUP BY, the raw row count."""
    batch = archive_directly(ctx, archive, ((touch_topic(ctx, e), e) for e in events(40, 3)))
    backend = archive.backend()
    stored = backend.query("SELECT count() FROM touch_events")[0][0]
    assert stored == len(batch.touches) > 0
    insert_batch(backend, batch)  # a replay of the same offsets
    assert backend.query("SELECT count() FROM touch_events")[0][0] == stored
    # The same rows under other offsets are another insert (the tables absorb those).
    again = Batch(touches=batch.touches[:10])
    again.note("elsewhere", 0, 0)
    backend.insert("touch_events", again.touches, TOUCH_COLUMNS, token=again.token("touch_events"))
    assert backend.query("SELECT count() FROM touch_events")[0][0] == stored + 10
    assert backend.query("SELECT count() FROM touch_events FINAL")[0][0] == stored


@EMBEDDED_ONLY
def test_a_refused_write_leaves_the_writer_able_to_write(ctx: Context, archive: Archive) -> None:
    """chDB keeps readonly=1 in its session after an INSERT refused in readonly mode; the
    read path must not leave the engine it shares with the writer read-only."""
    batch = archive_directly(ctx, archive, ((touch_topic(ctx, e), e) for e in events(10, 4)))
    backend = archive.backend()
    with pytest.raises(ArchiveQueryError, match="readonly"):
        backend.select("INSERT INTO touch_events (event_id, user_id) VALUES ('x', 'y')")
    again = Batch(touches=batch.touches)
    again.note("later", 0, 1)
    insert_batch(archive.backend(), again)  # not refused
    assert archive.backend().query("SELECT count() FROM touch_events")[0][0] == 2 * len(batch.touches)


def post_sql(base: str, sql: str, token: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({TOKEN_HEADER: token} if token else {})}
    request = urllib.request.Request(base + SQL_PATH, data=orjson.dumps({"sql": sql}), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.count("\n") == 1 and "Traceback" not in text, text
    return text


def test_tierflow_sql_directly_and_through_the_owner(ctx: Context, archive: Archive, tmp_path: Path) -> None:
    sent = events(60, 5)
    archive_directly(ctx, archive, ((touch_topic(ctx, e), e) for e in sent))
    unique = len({(e["user_id"], e["event_id"]) for e in sent})
    archive.close()  # nobody holds it now: the CLI opens it itself
    port = free_port()
    env = cli_env(ctx, tmp_path, TIERFLOW_WEB_PORT=str(port))

    def check_reads() -> None:
        shown = tierflow(env, "sql", "--json", UNIQUE_EVENTS)
        assert shown.returncode == 0, shown.stderr.decode()
        assert orjson.loads(shown.stdout) == [{"n": unique}]
        first = min(event_day(e) for e in sent)
        text = tierflow(env, "sql", "SELECT day, count() AS users FROM user_daily_v WHERE day = {d:Date}"
                        " GROUP BY day", "--param", f"d={first}")
        assert text.returncode == 0, text.stderr.decode()
        header, row = text.stdout.decode().splitlines()
        users = len({e["user_id"] for e in sent if event_day(e) == first})
        assert header == "day\tusers" and row == f"{first}\t{users}"
        refused = tierflow(env, "sql", "DROP TABLE touch_events")
        assert refused.returncode == 2 and "only read-only queries" in one_line(refused.stderr)
        two = tierflow(env, "sql", "SELECT 1; DROP TABLE touch_events")
        assert two.returncode == 2 and "one statement at a time" in one_line(two.stderr)
        bad = tierflow(env, "sql", "SELECT * FROM no_such_table")
        assert bad.returncode == 1 and "SQL error" in one_line(bad.stderr) and "no_such_table" in bad.stderr.decode()

    check_reads()
    if ctx.settings.clickhouse_url:
        return
    with dashboard_process(env, port) as base:
        owner = read_owner(ctx.settings.home / "chdb")
        assert owner is not None and owner.url == base
        check_reads()  # now through the owner
        assert post_sql(base, "SELECT 1", None)[0] == 401
        assert post_sql(base, "SELECT 1", "wrong")[0] == 401
        status, answer = post_sql(base, "INSERT INTO touch_events (event_id) VALUES ('x')", owner.token)
        assert status == 400 and "only read-only" in answer["error"]
        status, answer = post_sql(base, "SELECT count() AS n FROM touch_events FINAL", owner.token)
        assert status == 200 and answer["rows"] == [[unique]] and answer["types"] == ["UInt64"]


# A short ingest session, so the survivor gets the dead worker's input partitions in
# seconds; the archive's is the default: its next owner must not have to wait it out.
TWO_WORKERS = """
[worker]
session_timeout_ms = 6000
[archive]
flush_interval_ms = 300
"""
CHUNKS = 40


@EMBEDDED_ONLY
def test_two_workers_one_archive_owner_killed_mid_stream(settings: Settings, tmp_path: Path) -> None:
    config = tmp_path / "tierflow.toml"
    config.write_text(TWO_WORKERS)
    home = tmp_path / "home"  # shared: both workers' logs sit in tmp_path
    settings = replace(settings, config_path=config, home=home)
    ctx = archive_context(settings, home)
    ensure_topics(settings)
    sent, _ = population_events(users=400, days=60, seed=9, duplicate_share=0.05)
    chunks = [sent[n::CHUNKS] for n in range(CHUNKS)]
    workers = [WorkerProcess(settings, tmp_path / f"w{n}.log") for n in range(2)]

    def status_of(worker: WorkerProcess) -> dict:
        code, doc = get_json(f"http://127.0.0.1:{worker.web_port}/api/archive/status")
        assert isinstance(doc, dict)
        return doc if code == 200 else {"writer": doc.get("writer") or {}}

    def all_alive(_remaining: int = 0) -> None:
        for worker in workers:
            assert worker.alive, worker.log_tail()

    def state(worker: WorkerProcess) -> str | None:
        try:
            return (status_of(worker).get("writer") or {}).get("state")
        except OSError:
            return None

    feeder = threading.Thread(target=lambda: [send_events(settings, c) or time.sleep(0.3) for c in chunks],
                              daemon=True)
    try:
        workers[0].start()
        wait_until(lambda: state(workers[0]) == "running", "the first worker owns the archive")
        workers[1].start()
        wait_until(lambda: state(workers[1]) == "standby", "the second worker stands by")
        owner, standby = workers
        owner_file = read_owner(home / "chdb")
        assert owner_file is not None and owner_file.pid == owner.proc.pid  # type: ignore[union-attr]
        # The standby's dashboard reads the archive through the owner.
        assert status_of(standby)["where"] == f"the archive owner (pid {owner_file.pid}) at {owner_file.url}"

        feeder.start()
        # Mid-stream: the owner has archived some records, more are arriving.
        wait_until(lambda: status_of(owner)["writer"]["records"] > 0, "the owner archived something")
        assert feeder.is_alive()
        owner.kill9()
        killed = time.monotonic()
        wait_until(lambda: state(standby) == "running", "the standby took over", timeout=60)
        takeover_s = time.monotonic() - killed
        wait_until(lambda: status_of(standby)["writer"]["batches"] > 0, "the standby archived", timeout=60)
        writing_s = time.monotonic() - killed
        print(f"\nafter kill -9 the standby owned the archive in {takeover_s:.1f}s, wrote in {writing_s:.1f}s")
        assert writing_s < load_config(config).archive.session_timeout_ms / 1000
        feeder.join(180)
        assert standby.alive, standby.log_tail()
        workers = [standby]
        assert status_of(standby)["backend"] == "chdb"
        lag.wait(settings, 300, all_alive)
        wait_until(lambda: archive_lag(ctx) == 0, "the archive caught up", timeout=300)
        # While it runs, the CLI reads through it.
        shown = tierflow(env_for(settings), "sql", "--json", UNIQUE_EVENTS)
        assert shown.returncode == 0, shown.stderr.decode()
        unique = {(e["user_id"], e["event_id"]) for e in sent}
        assert orjson.loads(shown.stdout) == [{"n": len(unique)}]
    finally:
        for worker in workers:
            worker.stop()

    published = Published(settings)
    archive = Archive(ctx.settings, ctx.config.archive)
    try:
        backend = archive.backend()
        assert backend.query("SELECT count() FROM touch_events FINAL")[0][0] == len(unique)
        days = sorted(event_day(e) for e in sent)
        assert counts(aipl.report(backend, None, None)) == aipl_truth(sent, days[0], days[-1])[None]
        changes = {(c["dimension"], c["user_id"], c["version"]) for _, _, c in published.changes}
        grants = {(g["kind"], g["record_id"]) for _, _, g in published.grants}
        assert len(changes) == len(published.changes) > 0 and len(grants) == len(published.grants) > 0
        archived_changes = set(backend.query("SELECT dimension, user_id, version FROM tier_changes"))
        archived_grants = set(backend.query("SELECT kind, record_id FROM reward_grants"))
        assert archived_changes == changes
        assert archived_grants == grants
        assert backend.query("SELECT count() FROM tier_changes FINAL")[0][0] == len(changes)
        assert backend.query("SELECT count() FROM reward_grants FINAL")[0][0] == len(grants)
    finally:
        archive.close()
