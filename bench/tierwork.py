"""The state work the competitors do: rolling R/F/M day buckets per customer,
folded past the longest window, then tierflow's own tier rules
(`tiering.evaluate.evaluate`) on the summary, and one change record per
dimension whose value moved. Pure: the caller keeps the state (a Quix state
store, Redis) and sends the changes.

A customer's state is a plain dict (JSON in any store):
  "p": purchases and spend (pc, pa), first, last purchase and newest event times
       (fp, lp, le), the newest event day (maxday)
  "n": event counts under the names of `Summary.counts`
  "d": day -> [purchases, cents], for the longest window only
  "v": the tracked values last evaluated, and "s": the last RFM scores

Simpler than tierflow's store on purpose, and in the competitors' favour: no
event-id deduplication, no offsets, no category/sku/channel counters, no
outbox; the population means come from this process's own counts.
"""

from __future__ import annotations

from typing import Any

from tierflow.pipeline.config.domain import Config
from tierflow.pipeline.ingest.validate import ValidEvent
from tierflow.pipeline.state.summary import Summary, cents, day_of, iso
from tierflow.pipeline.tiering.evaluate import TRACKED, evaluate
from tierflow.pipeline.tiering.rfm import DIMENSIONS, SCORES, Population
from tierflow.schemas.events import Cart, Interaction, Purchase

State = dict[str, Any]
# Rebuild the population snapshot the scores are compared with after this many updates.
POPULATION_REFRESH = 1000
_WEEKEND = (5, 6)
_THURSDAY = 3  # 1970-01-01 was a Thursday


def new_state() -> State:
    return {"p": {}, "n": {}, "d": {}, "v": {}, "s": None}


def _bump(fields: dict[str, int], name: str, by: int = 1) -> None:
    fields[name] = fields.get(name, 0) + by


def apply_event(state: State, valid: ValidEvent, keep_days: int) -> None:
    """Count one event into the customer's profile, counts and day buckets."""
    profile, counts, days = state["p"], state["n"], state["d"]
    event, ts = valid.event, valid.ts_ms
    day = day_of(ts)
    if isinstance(event, Purchase):
        amount = cents(event.amount)
        _bump(profile, "pc")
        _bump(profile, "pa", amount)
        _bump(counts, "purchase_weekend" if (day + _THURSDAY) % 7 in _WEEKEND else "purchase_weekday")
        profile["fp"] = min(profile.get("fp", ts), ts)
        profile["lp"] = max(profile.get("lp", ts), ts)
        bucket = days.setdefault(str(day), [0, 0])
        bucket[0] += 1
        bucket[1] += amount
    elif isinstance(event, Cart):
        _bump(counts, "cart")
        _bump(counts, f"cart:{event.action}")
    elif isinstance(event, Interaction):
        _bump(counts, "interaction")
        _bump(counts, f"interaction:{event.kind}")
    else:
        _bump(counts, "browse")
    profile["le"] = max(profile.get("le", ts), ts)
    maxday = max(profile.get("maxday", day), day)
    profile["maxday"] = maxday
    for name in [n for n in days if int(n) <= maxday - keep_days]:
        del days[name]


def summary_of(user_id: str, state: State, now_ms: int, windows_days: list[int]) -> Summary:
    """R, F and M as of now from the day buckets, in tierflow's Summary."""
    profile = state["p"]
    today = day_of(now_ms)
    buckets = [(int(day), bucket) for day, bucket in state["d"].items() if int(day) <= today]
    frequency: dict[str, int] = {}
    monetary: dict[str, int] = {}
    for window in windows_days:
        inside = [bucket for day, bucket in buckets if day > today - window]
        frequency[f"{window}d"] = sum(b[0] for b in inside)
        monetary[f"{window}d"] = sum(b[1] for b in inside)
    frequency["lifetime"] = profile.get("pc", 0)
    monetary["lifetime"] = profile.get("pa", 0)
    last = profile.get("lp")
    return Summary(
        user_id=user_id, as_of_ms=now_ms,
        recency_days=today - day_of(last) if last is not None and day_of(last) <= today else None,
        frequency=frequency, monetary_cents=monetary,
        first_purchase_ms=profile.get("fp"), last_purchase_ms=last, counts=dict(state["n"]),
    )


class PopulationCounts:
    """Users per RFM score in this process, as the snapshot tierflow's scores compare with."""

    def __init__(self) -> None:
        self.counts = {dim: [0] * len(SCORES) for dim in DIMENSIONS}
        self.updates = 0
        self.snapshot = Population()

    def move(self, old: list[int] | None, new: list[int] | None) -> None:
        for scores, by in ((old, -1), (new, 1)):
            for dim, score in zip(DIMENSIONS, scores or (), strict=False):
                self.counts[dim][score - 1] += by
        self.updates += 1
        if self.updates % POPULATION_REFRESH == 0:
            self.snapshot = Population(counts={dim: list(c) for dim, c in self.counts.items()})


def changes(user_id: str, state: State, config: Config, population: PopulationCounts,
            now_ms: int) -> list[dict[str, object]]:
    """Evaluate the customer as of now; a change record per tracked dimension that moved."""
    summary = summary_of(user_id, state, now_ms, config.state.windows_days)
    evaluation = evaluate(summary, population.snapshot, config.tiering, now_ms)
    scores = evaluation.scores
    new_scores = [scores.r, scores.f, scores.m] if scores else None
    if new_scores != state["s"]:
        population.move(state["s"], new_scores)
        state["s"] = new_scores
    out: list[dict[str, object]] = []
    previous = state["v"]
    for dimension in TRACKED:
        value = evaluation.value(dimension)
        if value != previous.get(dimension):
            out.append({"user_id": user_id, "dimension": dimension, "old": previous.get(dimension),
                        "new": value, "event_time": iso(state["p"].get("le", now_ms))})
            previous[dimension] = value
    return out
