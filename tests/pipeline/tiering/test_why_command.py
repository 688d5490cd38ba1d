"""`tierflow why` run as a user runs it, against a real worker's records on tier.changes:
each change with why, in order; exit 4 for an unknown customer; one line when Kafka is down.
And the formatting of an explanation (pure)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from tests.e2e.test_tiers import browse, purchase, wait_until
from tests.fixtures.worker import cli, read_to_end, running_worker, send_events, wait_processed
from tierflow.pipeline.cli.commands.why import describe
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.lanes import Lanes
from tierflow.pipeline.state.store import connect
from tierflow.pipeline.state.summary import DAY_MS
from tierflow.pipeline.tiering.store import TierStore
from tierflow.schemas.tier_changes import ChangeScores, Factor, Why


def test_an_explanation_reads_as_one_line() -> None:
    why = Why("rfm", r=Factor(12, 3, False, 20, 3.0), f=Factor(1, 1, False), m=Factor(1200, 4, True, 1000, 2.5),
              prev=ChangeScores(5, 1, 4))
    assert describe(why) == ("rfm; R3 low (12 days <= 20 days, mean 3.00), F1 low (1 purchases below every"
                             " threshold), M4 high (1200 yuan >= 1000, mean 2.50); was R5 F1 M4")
    points = Why("points_tier", points=1200, bounds={"min_points": 1000}, event_id="p1", event_type="purchase")
    assert describe(points) == "points_tier; 1,200 points; reached min_points 1000; after purchase p1"
    assert describe(None).startswith("(no explanation")
    notice = Why("points_tier", points=900, held_since="2026-10-01T00:00:00Z", downgrade_to="ordinary",
                 downgrade_at="2026-10-11T00:00:00Z")
    assert describe(notice) == ("points_tier; 900 points; down to ordinary at 2026-10-11T00:00:00Z unless the"
                                " customer recovers; downgrade held since 2026-10-01T00:00:00Z")


def test_why_prints_a_workers_changes_with_their_reasons(settings: Settings, tmp_path: Path) -> None:
    settings = replace(settings, clock="event")
    base = (int(time.time() * 1000) // DAY_MS - 60) * DAY_MS + DAY_MS // 2
    tiers = TierStore(connect(settings.redis_url), load_config())
    with running_worker(settings, tmp_path) as worker:
        send_events(settings, [browse("ann", 1, base), purchase("ann", 1, base + 1000, 1200.0)])
        send_events(settings, [purchase("bob", 1, base - 40 * DAY_MS)])
        wait_processed(settings, worker)
        # Twelve days later (the event clock moves with a visitor's browse) Ann's R falls to 3.
        send_events(settings, [browse("clock", 1, base + 12 * DAY_MS)])
        wait_processed(settings, worker)

        def settled() -> bool:
            stored = tiers.stored("ann")
            return bool(stored and stored.scores and stored.scores.r == 3 and not tiers.outbox.users(10))

        wait_until(settled, 60, worker, "ann's decay published")

    published = [r for r in read_to_end(settings, settings.topics.tier_changes) if r["user_id"] == "ann"]
    result = cli(settings, "why", "ann", "--json")
    assert result.returncode == 0, result.stderr
    history = json.loads(result.stdout)
    # Exactly the customer's records on the topic, in order, each with its explanation.
    assert history == published
    assert [r["seq"] for r in history] == list(range(1, len(history) + 1))
    first_purchase = next(r for r in history if r["dimension"] == "lifecycle" and r["new"] == "first_purchase")
    assert first_purchase["why"] == {"rule": "first_purchase", "purchases": 1, "spend": 1200,
                                     "event_id": "ann-p1", "event_type": "purchase"}
    membership = next(r for r in history if r["dimension"] == "membership" and r["new"] == "super")
    assert membership["why"]["points"] >= 1200 and membership["why"]["bounds"] == {"min_points": 1000}
    assert all(r["why"]["rule"] for r in history)

    last_two = cli(settings, "why", "ann", "--limit", "2")
    assert last_two.returncode == 0
    lines = last_two.stdout.decode().splitlines()
    assert lines[0] == f"ann: last 2 of {len(history)} tier changes, oldest first" and len(lines) == 5
    assert lines[3].startswith(history[-1]["event_time"])

    unknown = cli(settings, "why", "nobody")
    assert unknown.returncode == 4 and unknown.stdout == b""
    assert unknown.stderr.decode().strip() == "tierflow: unknown customer 'nobody': no events applied for this id"


def test_why_says_in_one_line_that_kafka_is_down(settings: Settings) -> None:
    client = connect(settings.redis_url)
    client.set(Lanes.key("ann"), 0)  # a known customer: the command goes on to read the topic
    down = replace(settings, kafka=replace(settings.kafka, bootstrap="127.0.0.1:1"))
    result = cli(down, "why", "ann")
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Kafka" in lines[0], lines
