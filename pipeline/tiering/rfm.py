"""RFM: scores 1..5 per dimension, high/low against the population mean, and the
eight segments (docs/domain.md, "The eight RFM segments").

Raw values are integers: R is scored from the days since the last purchase
(thresholds mode) or from the last purchase day itself (quantiles mode, where a
later day is better, so the population's cut points do not move as days pass);
F is the purchase count in the window; M the spend in the window in cents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from tierflow.pipeline.state.summary import DAY_MS
from tierflow.pipeline.tiering.config import BOUND_COUNT, TieringConfig

DIMENSIONS = ("r", "f", "m")
SCORES = (1, 2, 3, 4, 5)

# (R high, F high, M high) -> segment id, in the order of docs/domain.md, "The eight RFM segments".
SEGMENTS: dict[tuple[bool, bool, bool], str] = {
    (True, True, True): "important_value",
    (True, False, True): "important_develop",
    (False, True, True): "important_retain",
    (False, False, True): "important_win_back",
    (True, True, False): "general_value",
    (True, False, False): "general_develop",
    (False, True, False): "general_retain",
    (False, False, False): "general_win_back",
}
SEGMENT_IDS = tuple(SEGMENTS.values())


class Scores(msgspec.Struct, frozen=True):
    r: int
    f: int
    m: int

    def of(self, dim: str) -> int:
        return getattr(self, dim)


class High(msgspec.Struct, frozen=True):
    r: bool
    f: bool
    m: bool


class RawRfm(msgspec.Struct, frozen=True):
    """What the scores were computed from (the population keeps these for quantiles)."""

    last_purchase_day: int
    frequency: int
    monetary_cents: int

    def of(self, dim: str) -> int:
        return {"r": self.last_purchase_day, "f": self.frequency, "m": self.monetary_cents}[dim]


class Population(msgspec.Struct, frozen=True):
    """The population as of a snapshot: how many scored users hold each score
    (index 0 = score 1), and the quantile cut points per dimension where known."""

    counts: dict[str, list[int]] = msgspec.field(default_factory=dict)
    cuts: dict[str, list[int]] = msgspec.field(default_factory=dict)

    def size(self, dim: str) -> int:
        return sum(self.counts.get(dim, ()))

    def mean(self, dim: str) -> float | None:
        counts = self.counts.get(dim, [])
        n = sum(counts)
        return sum(s * c for s, c in zip(SCORES, counts, strict=False)) / n if n else None

    def high(self, dim: str, score: int) -> bool:
        """Strictly above the mean, compared exactly in integers (score * n > total)."""
        counts = self.counts.get(dim, [])
        n = sum(counts)
        total = sum(s * c for s, c in zip(SCORES, counts, strict=False))
        return n > 0 and score * n > total


def score_at_least(value: int, minimums: Sequence[int]) -> int:
    """1 + how many ascending minimums the value reaches (F, M, and quantile cuts)."""
    return 1 + sum(1 for b in minimums if value >= b)


def score_at_most(value: int, maximums: Sequence[int]) -> int:
    """1 + how many ascending maximums the value stays within (R in days)."""
    return 1 + sum(1 for b in maximums if value <= b)


def quantile_ranks(n: int) -> list[int]:
    """0-based ranks of the largest value in the bottom 1, 2, 3 and 4 fifths of n values."""
    return [math.ceil(k * n / 5) - 1 for k in range(1, BOUND_COUNT + 1)]


def quantile_cuts(values: Sequence[int]) -> list[int] | None:
    """Cut points c1..c4 so that `score_at_least(v, cuts)` is 1 + the number of
    quintiles of the population lying wholly below v: a value beats at least
    ceil(k*n/5) others exactly when it exceeds the value ranked ceil(k*n/5) - 1,
    i.e. reaches c_k = that value + 1 (raw values are integers). Ties share a
    score; with distinct values each score holds a fifth of the population."""
    if not values:
        return None
    ordered = sorted(values)
    return cuts_from_ranked([ordered[rank] for rank in quantile_ranks(len(ordered))])


def cuts_from_ranked(ranked: Sequence[int]) -> list[int]:
    """Cut points from the values found at `quantile_ranks` (e.g. by a store)."""
    return [v + 1 for v in ranked]


def cuts_in_use(config: TieringConfig, population: Population, dim: str) -> list[int] | None:
    """The dimension's quantile cut points when it is scored by quantiles and has them."""
    mode = {"r": config.recency.mode, "f": config.frequency.mode, "m": config.monetary.mode}[dim]
    if mode != "quantiles":
        return None
    return population.cuts.get(dim)


def score(raw: RawRfm, as_of_day: int, population: Population, config: TieringConfig) -> Scores:
    """R, F and M scores; a dimension in quantile mode without cut points yet uses its table."""
    cuts_r = cuts_in_use(config, population, "r")
    cuts_f = cuts_in_use(config, population, "f")
    cuts_m = cuts_in_use(config, population, "m")
    days = as_of_day - raw.last_purchase_day
    return Scores(
        r=(
            score_at_least(raw.last_purchase_day, cuts_r)
            if cuts_r
            else score_at_most(days, config.recency.thresholds)
        ),
        f=score_at_least(raw.frequency, cuts_f or config.frequency.thresholds),
        m=score_at_least(raw.monetary_cents, cuts_m or config.monetary.thresholds_cents),
    )


def high_low(scores: Scores, population: Population) -> High:
    return High(
        r=population.high("r", scores.r),
        f=population.high("f", scores.f),
        m=population.high("m", scores.m),
    )


def segment_of(high: High) -> str:
    return SEGMENTS[(high.r, high.f, high.m)]


def next_recency_change_ms(
    raw: RawRfm, as_of_day: int, population: Population, config: TieringConfig
) -> int | None:
    """When R drops with no new purchase: the first day past the smallest
    threshold still reached. In quantile mode R moves only with the cut points."""
    if cuts_in_use(config, population, "r"):
        return None
    days = as_of_day - raw.last_purchase_day
    reached = [b for b in config.recency.thresholds if days <= b]
    if not reached:
        return None
    return (raw.last_purchase_day + min(reached) + 1) * DAY_MS
