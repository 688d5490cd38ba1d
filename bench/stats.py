"""Pure helpers for the benchmark's figures: percentiles, a CDF, ratios."""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ascending values: the smallest value with at
    least q% of the values at or below it."""
    if not ordered:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} outside (0, 100]")
    # Rounded first: 99.9 / 100 * 1000 is 999.0000000000001 in floating point.
    rank = math.ceil(round(q * len(ordered) / 100, 9))
    return ordered[max(rank - 1, 0)]


def cdf(values: Sequence[float], points: int = 200) -> list[tuple[float, float]]:
    """(value, fraction of values <= it) at up to `points` evenly spaced ranks, the
    maximum included: enough to draw the curve without shipping every sample."""
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return []
    ranks = sorted({min(math.ceil(k * n / points), n) for k in range(1, points + 1)})
    return [(ordered[r - 1], r / n) for r in ranks]


def latency_summary(values_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    if not ordered:
        return {"count": 0}
    summary = {"count": len(ordered), "min": ordered[0], "max": ordered[-1]}
    summary |= {f"p{q:g}": percentile(ordered, q) for q in PERCENTILES}
    return summary


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is 0."""
    if not numerator or not denominator:
        return None
    return numerator / denominator
