"""The archive under failure, through the real worker and embedded chDB: an
archive that cannot be written holds its batch uncommitted, the worker reports
it, tiering goes on, and the archive catches up once it can write again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from tests.fixtures.archive import (
    aipl_truth,
    archive_context,
    archive_lag,
    cli_env,
    counts,
    event_day,
    get_json,
    produce,
    running_archive,
    touch_topic,
    wait_until,
    with_archive_settings,
)
from tests.fixtures.worker import ROOT, free_port
from tierflow.pipeline.archive import aipl
from tierflow.pipeline.archive.config import chdb_path
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.demo.synth import Population
from tierflow.pipeline.kafka import lag
from tierflow.pipeline.kafka.topics import ensure_topics

# Retries every half second at most, so the catch-up is quick to observe.
FAST_RETRY = "[archive]\nflush_interval_ms = 200\nretry_initial_ms = 100\nretry_max_ms = 500\n"


@pytest.mark.skipif(bool(os.environ.get("CLICKHOUSE_URL")), reason="embedded chDB only")
def test_worker_holds_the_archive_while_its_chdb_directory_is_gone(settings: Settings, tmp_path: Path) -> None:
    ctx = archive_context(settings, tmp_path / "home")
    ensure_topics(ctx.settings)
    config = tmp_path / "archive.toml"
    config.write_text(FAST_RETRY)
    port = free_port()
    env = cli_env(ctx, tmp_path, TIERFLOW_WEB_PORT=str(port), TIERFLOW_CONFIG=str(config))
    status_url = f"http://127.0.0.1:{port}/api/archive/status"
    events = list(Population(60, 30, int(time.time() * 1000), seed=51, run="f51").events())
    early = [e for e in events if int(e["user_id"][-3:]) % 2 == 0]
    late = [e for e in events if int(e["user_id"][-3:]) % 2 == 1]

    def records(evs: list[dict]) -> list[tuple[str, bytes | None, bytes | None]]:
        return [(touch_topic(ctx, e), e["user_id"].encode(), orjson.dumps(e)) for e in evs]

    def writer() -> dict:
        _, doc = get_json(status_url)
        assert isinstance(doc, dict)
        return doc.get("writer") or {}

    chdb = chdb_path(ctx.config.archive, ctx.settings.home)
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "tierflow.pipeline.cli.main", "worker", "--loglevel", "warning"],
                              env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        produce(ctx, records(early))
        wait_until(lambda: archive_lag(ctx) == 0, "the archive caught up", timeout=180)

        # The directory disappears under the running worker (rm -rf, an unmounted volume).
        shutil.rmtree(chdb)
        held = produce(ctx, records(late))
        wait_until(lambda: writer().get("state") == "holding", "the writer holds the batch")
        # Tiering goes on: the ingest group reads everything while the archive holds.
        wait_until(lambda: sum(r.lag for r in lag.measure(ctx.settings)) == 0, "ingest caught up")
        status, doc = get_json(status_url)
        assert status == 503 and isinstance(doc, dict)
        assert "removed or replaced" in doc["writer"]["last_error"] or "missing" in doc["writer"]["last_error"]
        # Nothing committed while the archive cannot be written.
        assert archive_lag(ctx, ctx.settings.topics.inputs) == held
        assert not chdb.exists()  # never recreated behind the operator's back

        # A directory is back at the path (here an empty one: a new archive).
        chdb.mkdir()
        wait_until(lambda: archive_lag(ctx) == 0, "the archive caught up after the directory came back")
        wait_until(lambda: writer().get("state") == "running", "the writer runs again")
    finally:
        worker.terminate()
        worker.wait(60)
        log.close()

    # Every row the held batches carried is in the archive now there.
    archive = Archive(ctx.settings, ctx.config.archive)
    try:
        days = sorted(event_day(e) for e in late)
        want = aipl_truth(late, days[0], days[-1])[None]
        assert counts(aipl.report(archive.backend(), None, None)) == want
        unique = {(e["user_id"], e["event_id"]) for e in late}
        assert archive.backend().query("SELECT count() FROM touch_events FINAL")[0][0] == len(unique)
    finally:
        archive.close()


@contextmanager
def small_disk(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of its own (root only), so the disk can be filled without filling the machine's."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * (1 << 20))
                out.flush()
        except OSError:
            pass
    return filler


@pytest.mark.skipif(bool(os.environ.get("CLICKHOUSE_URL")), reason="embedded chDB only")
def test_writer_holds_while_the_disk_is_full_and_catches_up(settings: Settings, tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", 48) as disk:
        ctx = with_archive_settings(archive_context(settings, tmp_path / "home"), chdb_dir=str(disk / "chdb"),
                                    flush_interval_ms=200, retry_initial_ms=100, retry_max_ms=500)
        ensure_topics(ctx.settings)
        events = list(Population(60, 30, int(time.time() * 1000), seed=53, run="f53").events())
        first, second = events[: len(events) // 2], events[len(events) // 2:]
        inputs = ctx.settings.topics.inputs

        def records(evs: list[dict]) -> list[tuple[str, bytes | None, bytes | None]]:
            return [(touch_topic(ctx, e), e["user_id"].encode(), orjson.dumps(e)) for e in evs]

        archive = Archive(ctx.settings, ctx.config.archive)
        try:
            with running_archive(ctx, archive) as run:
                produce(ctx, records(first))
                wait_until(lambda: archive_lag(ctx, inputs) == 0, "the archive caught up")
                filler = fill(disk)
                held = produce(ctx, records(second))
                wait_until(lambda: run.status()["state"] == "holding", "the writer holds the batch")
                assert "NOT_ENOUGH_SPACE" in run.status()["last_error"]
                assert archive_lag(ctx, inputs) == held
                filler.unlink()
                wait_until(lambda: archive_lag(ctx, inputs) == 0, "the archive caught up after space was freed")
                assert run.status()["state"] == "running"
            unique = {(e["user_id"], e["event_id"]) for e in events}
            assert archive.backend().query("SELECT count() FROM touch_events FINAL")[0][0] == len(unique)
        finally:
            archive.close()
