"""Pure parts of the archive's read path and ownership: which SQL `tierflow sql`
accepts, how parameters and results travel to and from the owner, the insert
deduplication token of a batch, the points a reward record moves, and the owner
lock between processes (no services: files and processes only)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from tests.fixtures.worker import ROOT
from tierflow.pipeline.archive.batch import Batch
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.archive.owner import Endpoint, Ownership, loopback_url, read_owner
from tierflow.pipeline.archive.rows import points_moved
from tierflow.pipeline.archive.sql import (
    SqlRefused,
    decode_params,
    encode_params,
    from_json,
    read_only_statement,
)
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.config.settings import Settings
from tierflow.schemas.reward_grants import RewardItem, RewardRecord


@pytest.mark.parametrize(("sql", "statement"), [
    ("SELECT 1", "SELECT 1"),
    ("select 1;", "select 1"),
    ("  (SELECT 1) UNION ALL (SELECT 2) ;  -- done", "(SELECT 1) UNION ALL (SELECT 2)"),
    ("WITH 2 AS x SELECT x", "WITH 2 AS x SELECT x"),
    ("SHOW TABLES", "SHOW TABLES"),
    ("DESCRIBE touch_events", "DESCRIBE touch_events"),
    ("desc touch_events", "desc touch_events"),
    ("EXPLAIN SELECT 1", "EXPLAIN SELECT 1"),
    ("-- a note\nSELECT ';' AS semi /* ; */", "-- a note\nSELECT ';' AS semi /* ; */"),
    ("SELECT 'it\\'s; fine', \"a;b\", `c;d`", "SELECT 'it\\'s; fine', \"a;b\", `c;d`"),
])
def test_read_only_statements_are_accepted(sql: str, statement: str) -> None:
    assert read_only_statement(sql) == statement


@pytest.mark.parametrize(("sql", "reason"), [
    ("INSERT INTO touch_events SELECT * FROM touch_events", "only read-only queries"),
    ("DROP TABLE touch_events", "only read-only queries"),
    ("ALTER TABLE reward_grants DELETE WHERE 1", "only read-only queries"),
    ("SELECT 1; DROP TABLE touch_events", "one statement at a time"),
    ("SELECT 1;;SELECT 2", "one statement at a time"),
    ("SELECT 1 INTO OUTFILE '/tmp/x'", "INTO OUTFILE"),
    ("select 1 into /* hidden */ outfile '/tmp/x'", "INTO OUTFILE"),
    ("SELECT 'unterminated", "unterminated quote"),
    ("SELECT 1 /* open", "unterminated comment"),
    ("  -- nothing\n", "no statement"),
])
def test_anything_else_is_refused(sql: str, reason: str) -> None:
    with pytest.raises(SqlRefused, match=reason):
        read_only_statement(sql)


def test_parameters_and_results_keep_their_types_through_json() -> None:
    params = {"from": date(2026, 3, 2), "at": datetime(2026, 3, 2, 12, 30, tzinfo=UTC), "n": 5, "s": "x"}
    sent = encode_params(params)
    assert decode_params(sent) == params
    assert from_json("2026-03-02", "Date") == date(2026, 3, 2)
    assert from_json("2026-03-02T12:30:00.250000+00:00", "DateTime64(3, 'UTC')") == \
        datetime(2026, 3, 2, 12, 30, 0, 250000, tzinfo=UTC)
    assert from_json(["2026-03-02", None], "Array(Nullable(Date))") == [date(2026, 3, 2), None]
    assert from_json(None, "Nullable(DateTime64(3, 'UTC'))") is None
    assert from_json("aware", "LowCardinality(String)") == "aware"
    assert from_json(7, "UInt64") == 7


def test_a_batch_token_names_its_offsets() -> None:
    def batch(offsets: list[tuple[str, int, int]]) -> Batch:
        b = Batch()
        for topic, partition, offset in offsets:
            b.note(topic, partition, offset)
        return b

    first = batch([("t", 0, 5), ("t", 0, 9), ("u", 1, 3), ("t", 0, 7)])
    assert first.ranges == {("t", 0): (5, 9), ("u", 1): (3, 3)}
    # The same records read again, in any order, give the same token; other records another.
    again = batch([("u", 1, 3), ("t", 0, 9), ("t", 0, 5)])
    assert first.token("touch_events") == again.token("touch_events")
    assert first.token("touch_events") != first.token("tier_changes")
    assert batch([("t", 0, 5), ("t", 0, 10), ("u", 1, 3)]).token("touch_events") != first.token("touch_events")


def _lot(item_id: str, points: int) -> RewardItem:
    return RewardItem(item_id=item_id, type="points", prize="p", campaign="c", rule="r",
                      value_cents=points, granted_ms=1, points=points)


def test_a_points_grant_moves_the_points_of_its_lots() -> None:
    coupon = RewardItem(item_id="k", type="coupon", prize="c20", campaign="c", rule="r",
                        value_cents=2000, granted_ms=1)
    grant = RewardRecord(record_id="g", kind="grant", user_id="u", at_ms=1, recorded_ms=1,
                         items=[_lot("a", 300), coupon, _lot("b", 200)])
    assert points_moved(grant) == 500
    expiry = RewardRecord(record_id="e", kind="expiry", user_id="u", at_ms=1, recorded_ms=1,
                          items=[_lot("a", 300)], points_delta=-300)
    assert points_moved(expiry) == -300
    redemption = RewardRecord(record_id="r", kind="redemption", user_id="u", at_ms=1, recorded_ms=1,
                              items=[coupon])
    assert points_moved(redemption) == 0


def test_loopback_url_of_a_bound_address() -> None:
    assert loopback_url("0.0.0.0", 6066) == "http://127.0.0.1:6066"
    assert loopback_url("::1", 7000) == "http://[::1]:7000"
    assert loopback_url("127.0.0.1", 6066) == "http://127.0.0.1:6066"


# Takes the owner lock of argv[1] and says so, then waits to be killed.
HOLD = """
import sys, time
from pathlib import Path
from tierflow.pipeline.archive.owner import OWNERSHIP
assert OWNERSHIP.take(Path(sys.argv[1]))
print("holding", flush=True)
time.sleep(600)
"""


def test_one_process_owns_an_archive_until_it_dies(tmp_path: Path) -> None:
    chdb = tmp_path / "chdb"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(chdb)], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"holding"
        here = Ownership()
        assert not here.take(chdb)
        owner = read_owner(chdb)
        assert owner is not None and owner.pid == holder.pid and owner.endpoint() is None
        holder.kill()  # as kill -9: the kernel frees the lock
        holder.wait(10)
        assert here.take(chdb)
        assert here.take(chdb)  # counted within the process
        here.advertise(chdb, Endpoint("http://127.0.0.1:6066", "secret"))
        owner = read_owner(chdb)
        assert owner is not None and owner.endpoint() == Endpoint("http://127.0.0.1:6066", "secret")
        assert (chdb.parent / "chdb.owner").stat().st_mode & 0o077 == 0  # readable by its owner only
        here.give_back(chdb)
        assert here.holds(chdb)
        here.give_back(chdb)
        assert not here.holds(chdb) and read_owner(chdb) is None
        assert Ownership().take(chdb)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_with_a_server_every_process_writes(tmp_path: Path) -> None:
    """No owner lock with CLICKHOUSE_URL: every worker's writer may take its partitions
    (nothing is contacted to decide that)."""
    settings = replace(Settings.from_env(), home=tmp_path, clickhouse_url="http://127.0.0.1:1/tierflow")
    first, second = (Archive(settings, load_config().archive) for _ in range(2))
    assert first.claim() and second.claim()
    assert not list(tmp_path.iterdir())
    first.release()
    second.release()
