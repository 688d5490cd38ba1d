"""The benchmark's pure helpers: percentiles, the CDF, ratios, the traffic mix."""

from __future__ import annotations

import time
from collections import Counter
from itertools import pairwise

import orjson
import pytest

from bench.stats import cdf, latency_summary, percentile, ratio
from bench.traffic import MIX, Traffic
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.ingest.validate import Limits, parse_record


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 99.9) == 100
    assert percentile(values, 100) == 100
    assert percentile([7.0], 1) == 7.0


def test_percentile_refuses_nothing_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 0)


def test_cdf_is_monotone_and_ends_at_the_maximum() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    points = cdf(values, points=200)
    assert points == [(1.0, 0.2), (2.0, 0.4), (3.0, 0.6), (4.0, 0.8), (5.0, 1.0)]
    many = cdf([float(v) for v in range(10_000)], points=100)
    assert len(many) == 100
    assert many[-1] == (9999.0, 1.0)
    assert all(a[0] <= b[0] and a[1] < b[1] for a, b in pairwise(many))
    assert cdf([]) == []


def test_latency_summary_names_the_percentiles() -> None:
    summary = latency_summary([float(v) for v in range(1, 1001)])
    assert summary["count"] == 1000
    assert (summary["p50"], summary["p99"], summary["p99.9"], summary["max"]) == (500.0, 990.0, 999.0, 1000.0)
    assert latency_summary([]) == {"count": 0}


def test_ratio_is_none_without_both_figures() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(3.0, 0.0) is None
    assert ratio(None, 2.0) is None


def test_traffic_has_the_mix_and_every_event_is_valid() -> None:
    now_ms = int(time.time() * 1000)
    events = list(Traffic(customers=500, days=30, end_ms=now_ms, seed=3, run="t").backlog(20_000))
    shares = Counter(e["type"] for e in events)
    for kind, share in MIX:
        assert abs(shares[kind] / len(events) - share) < 0.02, kind
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    limits = Limits.of(load_config().ingest)
    for e in events[:2000]:
        valid, rejected = parse_record(orjson.dumps(e), str(e["user_id"]).encode(), limits, now_ms)
        assert rejected == [] and len(valid) == 1


def test_daily_customers_are_active_every_day() -> None:
    now_ms = int(time.time() * 1000)
    traffic = Traffic(customers=1, days=1, end_ms=now_ms, seed=1, run="d")
    events = list(traffic.daily(["a", "b"], days=14))
    days = {(e["user_id"], int(e["ts"]) // 86_400_000) for e in events}
    assert len(days) == 2 * 14
    assert sum(e["type"] == "purchase" for e in events) == 2 * 2  # one a week
