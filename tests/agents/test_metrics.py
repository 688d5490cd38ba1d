"""The pure parts of the worker's observability: what the metrics count, the health
verdict, the JSON log line, and the Grafana dashboard against the metrics the worker
exports, repeated log lines held back (no services); and, with the real ingest loop
on real Kafka and Redis, the events of a customer a stage set aside counted as dead
letters, not as processed."""

from __future__ import annotations

import inspect
import logging
import re
from pathlib import Path

import orjson
import pytest
from mode.utils.logging import ExtensionFormatter
from prometheus_client.parser import text_string_to_metric_families

from tests.agents.test_ingest_poison import (
    batch_of,
    loop,  # noqa: F401  (the fixture: a real ingest loop on real services)
    sign_in,
)
from tests.fixtures.paths import ROOT
from tierflow.agents.health import Verdict
from tierflow.agents.ingest import AppliedBatch, CustomerStage, IngestLoop, IngestStats
from tierflow.agents.logs import JsonFormatter, Repeats, logging_config
from tierflow.agents.metrics import (
    MeteredOutputs,
    Metrics,
    add_stats,
    change_delays_s,
    changes_by_dimension,
    events_by_topic,
    notices_by_dimension,
    records_by_campaign,
)
from tierflow.agents.outputs import Outputs
from tierflow.pipeline.config.settings import Settings, Topics
from tierflow.pipeline.errors import ConfigError
from tierflow.pipeline.ingest.validate import ValidEvent
from tierflow.schemas.events import Browse, Cart
from tierflow.schemas.tier_changes import ChangeScores, TierChange

DASHBOARD = ROOT / "infra" / "grafana" / "tierflow.json"


def change(dimension: str, reason: str = "event", event_time: str = "2026-12-01T10:00:00Z") -> TierChange:
    return TierChange(user_id="u1", dimension=dimension, old=None, new="x", version=1, seq=1,  # type: ignore[arg-type]
                      reason=reason, scores=ChangeScores(r=None, f=None, m=None), points=0,  # type: ignore[arg-type]
                      repurchases=0, event_time=event_time)


def test_events_are_counted_under_the_topic_of_their_type() -> None:
    topics = Topics(prefix="p.")
    events = [
        ValidEvent(Browse(event_id=f"e{n}", user_id=f"u{n}", ts="2026-12-01T10:00:00Z", channel="app", page="home"), 0)
        for n in range(2)
    ]
    events.append(ValidEvent(Cart(event_id="e3", user_id="u1", ts="2026-12-01T10:00:00Z", channel="app",
                                  action="add", sku="s1", category="c", qty=1, price=1.0), 0))
    batch = AppliedBatch(events, 3, 0, {"u0": 0, "u1": 1})
    assert events_by_topic(batch, topics) == {"p.touch.browse": 2, "p.touch.cart": 1}


def test_tier_changes_per_dimension_and_the_delay_of_those_an_event_caused() -> None:
    changes = [change("segment"), change("aipl"), change("segment", reason="time_decay"),
               change("membership", reason="will_downgrade")]
    assert changes_by_dimension(changes) == {"segment": 2, "aipl": 1}  # a notice changes nothing
    assert notices_by_dimension(changes) == {"membership": 1}
    event_ms = 1_796_119_200_000  # 2026-12-01T10:00:00Z
    assert change_delays_s(changes, event_ms + 1_500) == [1.5, 1.5]
    # A clock behind the event's time is no negative delay.
    assert change_delays_s([change("segment")], event_ms - 10) == [0.0]


def test_reward_records_per_campaign_and_kind() -> None:
    raws = [
        orjson.dumps({"record_id": "a", "kind": "grant", "campaign": "vip_welcome", "user_id": "u1"}),
        orjson.dumps({"record_id": "b", "kind": "grant", "campaign": "vip_welcome", "user_id": "u2"}).decode(),
        orjson.dumps({"record_id": "c", "kind": "points_adjust", "campaign": None, "user_id": "u1"}),
    ]
    assert records_by_campaign(raws) == {("vip_welcome", "grant"): 2, ("none", "points_adjust"): 1}


def test_ingest_counters_carry_over_from_one_loop_to_the_next() -> None:
    first = IngestStats(records=3, events=4, applied=2, rejected=1, batches=1, reasons={"not_json": 1})
    second = IngestStats(records=5, events=5, applied=5, rejected=2, batches=2, reasons={"not_json": 1, "x": 1})
    total = add_stats(first, second)
    assert (total.records, total.events, total.applied, total.rejected, total.batches) == (8, 9, 7, 3, 3)
    assert total.reasons == {"not_json": 2, "x": 1}


def test_timed_stages_keep_their_kind_and_name() -> None:
    class Tiers(CustomerStage):
        def run(self, batch: AppliedBatch) -> None:
            self.seen = batch

    class Outputs:
        def run(self, batch: AppliedBatch) -> None:
            pass

    tiers = Tiers()
    stages = Metrics(Settings()).stages({"tiers": tiers, "outputs": Outputs()})
    assert [type(stage).__name__ for stage in stages[1:3]] == ["Tiers", "Outputs"]
    assert isinstance(stages[1], CustomerStage) and not isinstance(stages[2], CustomerStage)
    batch = AppliedBatch([], 0, 0, {})
    for stage in stages:
        stage.run(batch)
    assert tiers.seen is batch


def test_health_verdict_names_what_fails() -> None:
    assert Verdict({"redis": "ok", "kafka": "ok"}).body() == {"status": "ok", "checks": {"redis": "ok", "kafka": "ok"}}
    failing = Verdict({"redis": "unreachable", "kafka": "ok", "archive": "failing (ArchiveUnavailable)"})
    assert not failing.healthy
    assert failing.body() == {"status": "unavailable", "reason": "redis: unreachable; archive: failing"
                              " (ArchiveUnavailable)", "checks": failing.checks}


def test_json_log_line_carries_extra_fields_and_masks_secrets() -> None:
    formatter = JsonFormatter(lambda text: text.replace("hunter22", "***"))
    logger = logging.getLogger("tierflow.test")
    record = logger.makeRecord("tierflow.test", logging.WARNING, __file__, 1, "login %s failed", ("hunter22",),
                               None, extra={"user": "u1", "attempts": 3, "url": "redis://:hunter22@h"})
    line = formatter.format(record)
    assert "\n" not in line and "hunter22" not in line
    entry = orjson.loads(line)
    assert entry["level"] == "warning" and entry["logger"] == "tierflow.test"
    assert entry["message"] == "login *** failed"
    assert entry["user"] == "u1" and entry["attempts"] == 3 and entry["url"] == "redis://:***@h"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
    assert logging_config("text", "info", str) is None


def exported_names() -> set[str]:
    """Every sample name the worker's /metrics can show."""
    text = Metrics(Settings()).render().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names


def expressions(dashboard: object) -> list[str]:
    if isinstance(dashboard, dict):
        found = [dashboard["expr"]] if isinstance(dashboard.get("expr"), str) else []
        return found + [expr for value in dashboard.values() for expr in expressions(value)]
    if isinstance(dashboard, list):
        return [expr for value in dashboard for expr in expressions(value)]
    return []


def test_every_grafana_expression_names_a_metric_the_worker_exports() -> None:
    dashboard = orjson.loads(Path(DASHBOARD).read_bytes())
    exprs = expressions(dashboard)
    assert len(exprs) >= 8, "a panel per metric family"
    exported = exported_names()
    for expr in exprs:
        used = set(re.findall(r"\btierflow_[a-z_]+", expr))
        assert used, expr
        assert used <= exported, (expr, used - exported)
    # Every family the worker exports for tierflow has a panel.
    shown = {name for expr in exprs for name in re.findall(r"\btierflow_[a-z_]+", expr)}
    families = {"tierflow_events_processed_total", "tierflow_consumer_lag", "tierflow_dead_letters_total",
                "tierflow_tier_changes_total", "tierflow_reward_records_total",
                "tierflow_event_to_tier_change_seconds_bucket", "tierflow_stage_batch_seconds_bucket"}
    assert families <= shown, families - shown


def test_log_format_comes_from_the_environment_and_a_bad_one_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERFLOW_LOG_FORMAT", "JSON")
    assert Settings.from_env().log_format == "json"
    monkeypatch.setenv("TIERFLOW_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="TIERFLOW_LOG_FORMAT='xml' is not one of text, json"):
        Settings.from_env()


def test_a_repeated_line_is_shown_once_per_window_then_says_how_many_were_held() -> None:
    now = [0.0]
    repeats = Repeats(60, clock=lambda: now[0])
    logger = logging.getLogger("tierflow.test")

    def line(msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
        return logger.makeRecord("tierflow.test", level, __file__, 1, msg, args, None)

    refused = "Connect to 127.0.0.1:%d failed (after %dms)"
    assert repeats.filter(line(refused, 9092, 0))
    # The same line but for its numbers, within the window: held back.
    assert not repeats.filter(line(refused, 9092, 3))
    assert not repeats.filter(line(refused, 9093, 1))
    # Another message, or the same at another level, is another line.
    assert repeats.filter(line("archive holding"))
    assert repeats.filter(line(refused, 9092, 0, level=logging.WARNING))
    now[0] = 61.0
    shown = line(refused, 9092, 7)
    assert repeats.filter(shown)
    assert shown.getMessage() == "Connect to 127.0.0.1:9092 failed (after 7ms) (2 more like it held back)"
    # Faust's console formatter (mode's) formats the rewritten line too, "%" in it included.
    now[0] = 200.0
    assert repeats.filter(line("Timer %s is overlapping (runtime=%r, 100%%)", "decay", 1.5))
    assert not repeats.filter(line("Timer %s is overlapping (runtime=%r, 100%%)", "decay", 2.5))
    now[0] = 300.0
    overlapping = line("Timer %s is overlapping (runtime=%r, 100%%)", "decay", 3.5)
    assert repeats.filter(overlapping)
    assert ExtensionFormatter(fmt="%(message)s").format(overlapping) == (
        "Timer decay is overlapping (runtime=3.5, 100%) (1 more like it held back)")
    assert Repeats(0).filter(line(refused, 1, 1)) and Repeats(0).filter(line(refused, 1, 1))


def test_the_publisher_hook_metered_outputs_overrides_is_still_there() -> None:
    """MeteredOutputs counts by overriding Outputs._publish: a rename there would
    silently stop the tier-change and reward-record counters."""
    assert list(inspect.signature(Outputs._publish).parameters) == ["self", "by_lane", "read"]
    assert MeteredOutputs._publish is not Outputs._publish


def test_events_of_a_customer_a_stage_set_aside_are_dead_letters_not_processed(
    request: pytest.FixtureRequest, settings: Settings
) -> None:
    ingest_loop: IngestLoop = request.getfixturevalue("loop")
    class FailsForBad(CustomerStage):
        def run(self, batch: AppliedBatch) -> None:
            if "bad" in batch.users:
                raise RuntimeError("a bug this customer's state triggers")

    metrics = Metrics(settings)
    ingest_loop.stages = metrics.stages({"tiers": FailsForBad()})
    metrics.ingest.watch(ingest_loop)
    ingest_loop.process(batch_of(ingest_loop, settings, [(b"good", sign_in("good", "e1")),
                                                         (b"bad", sign_in("bad", "e2")),
                                                         (b"good", sign_in("good", "e3"))]))
    samples = {(s.name, tuple(s.labels.values())): s.value
               for family in text_string_to_metric_families(metrics.render().decode()) for s in family.samples}
    assert samples[("tierflow_events_processed_total", (settings.topics.input("interaction"),))] == 2
    assert samples[("tierflow_dead_letters_total", ("internal_error",))] == 1
    assert samples[("tierflow_stage_batch_seconds_count", ("tiers",))] >= 2  # the batch, then its halves
