"""The competitors' state work (bench/tierwork.py): rolling buckets, folding, changes."""

from __future__ import annotations

import orjson

from bench.tierwork import PopulationCounts, apply_event, changes, new_state, summary_of
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.ingest.validate import Limits, parse_record
from tierflow.pipeline.state.summary import DAY_MS

NOW = 20_000 * DAY_MS + 12 * 3_600_000  # noon, day 20000


def purchase(event_id: str, days_ago: int, amount: float) -> dict[str, object]:
    return {"event_id": event_id, "type": "purchase", "user_id": "u1", "ts": NOW - days_ago * DAY_MS,
            "channel": "app", "order_id": f"o{event_id}", "amount": amount, "currency": "CNY",
            "items": [{"sku": "SN001", "category": "snacks", "qty": 1, "price": amount}]}


def apply_all(state: dict, events: list[dict[str, object]]) -> None:
    limits = Limits.of(load_config().ingest)
    for event in events:
        valid, rejected = parse_record(orjson.dumps(event), b"u1", limits, NOW)
        assert rejected == []
        for v in valid:
            apply_event(state, v, keep_days=90)


def test_buckets_past_the_longest_window_are_folded_into_lifetime_totals() -> None:
    state = new_state()
    apply_all(state, [purchase("a", 120, 50.0), purchase("b", 40, 20.0), purchase("c", 10, 10.0)])
    assert sorted(state["d"]) == [str(20_000 - 40), str(20_000 - 10)]
    summary = summary_of("u1", state, NOW, [30, 90])
    assert summary.frequency == {"30d": 1, "90d": 2, "lifetime": 3}
    assert summary.monetary_cents == {"30d": 1000, "90d": 3000, "lifetime": 8000}
    assert summary.recency_days == 10
    assert summary.counts["purchase_weekday"] + summary.counts.get("purchase_weekend", 0) == 3


def test_changes_are_reported_once_per_move() -> None:
    config = load_config()
    population = PopulationCounts()
    state = new_state()
    apply_all(state, [purchase("a", 5, 30.0)])
    first = changes("u1", state, config, population, NOW)
    assert {c["dimension"] for c in first} >= {"lifecycle", "segment"}
    assert all(c["old"] is None for c in first)
    assert changes("u1", state, config, population, NOW) == []
    apply_all(state, [purchase("b", 1, 30.0)])
    second = {c["dimension"]: c for c in changes("u1", state, config, population, NOW)}
    assert second["lifecycle"]["old"] == "first_purchase"
