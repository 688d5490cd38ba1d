"""The state work the competitors do, with tierflow's own pure code: rolling
R/F/M day buckets per customer, then tierflow's summary and tier rules
(`state.summary.summarize`, `tiering.evaluate.evaluate`), and one change record
per dimension whose value moved. Pure: the caller keeps the state (a Quix state
store, Redis) and sends the changes.

A customer's state is a plain dict (JSON in any store):
  "p": profile counters in tierflow's field names (pc, pa, fp, lp, maxday, nb, nc, ni, ...)
       and "le", the newest event time (the change records' event_time)
  "d": day buckets "c<day>" (purchases) and "a<day>" (cents), kept for the longest window only
  "v": the tracked values last evaluated, and "s": the last RFM scores

Simpler than tierflow's store on purpose, and in the competitors' favour: no
event-id deduplication, no offsets, no categories/skus/channels hashes, no
outbox; the population means come from this process's own counts.
"""

from __future__ import annotations

from typing import Any, cast

from tierflow.pipeline.config.domain import Config
from tierflow.pipeline.ingest.validate import ValidEvent
from tierflow.pipeline.state.summary import RawState, cents, day_of, iso, summarize
from tierflow.pipeline.tiering.evaluate import TRACKED, evaluate
from tierflow.pipeline.tiering.rfm import DIMENSIONS, SCORES, Population
from tierflow.schemas.events import Cart, Interaction, Purchase

State = dict[str, Any]
# Rebuild the population snapshot the scores are compared with after this many updates.
POPULATION_REFRESH = 1000
_WEEKEND = (5, 6)
_THURSDAY = 3  # 1970-01-01 was a Thursday


def new_state() -> State:
    return {"p": {}, "d": {}, "v": {}, "s": None}


def _bump(fields: dict[str, int], name: str, by: int = 1) -> None:
    fields[name] = fields.get(name, 0) + by


def apply_event(state: State, valid: ValidEvent, keep_days: int) -> None:
    """Count one event into the customer's profile and day buckets."""
    profile, days = state["p"], state["d"]
    event, ts = valid.event, valid.ts_ms
    day = day_of(ts)
    if isinstance(event, Purchase):
        amount = cents(event.amount)
        _bump(profile, "pc")
        _bump(profile, "pa", amount)
        _bump(profile, "pwe" if (day + _THURSDAY) % 7 in _WEEKEND else "pwd")
        profile["fp"] = min(profile.get("fp", ts), ts)
        profile["lp"] = max(profile.get("lp", ts), ts)
        _bump(days, f"c{day}")
        _bump(days, f"a{day}", amount)
    elif isinstance(event, Cart):
        _bump(profile, "nc")
        _bump(profile, f"c:{event.action}")
    elif isinstance(event, Interaction):
        _bump(profile, "ni")
        _bump(profile, f"k:{event.kind}")
    else:
        _bump(profile, "nb")
    profile["le"] = max(profile.get("le", ts), ts)
    maxday = max(profile.get("maxday", day), day)
    profile["maxday"] = maxday
    for name in [n for n in days if int(n[1:]) <= maxday - keep_days]:
        del days[name]


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
    profile, days = state["p"], state["d"]
    # summarize reads the stored strings with int(), which takes the ints kept here as they are.
    raw = RawState(profile=cast(dict[str, str], profile), days=cast(dict[str, str], days),
                   categories={}, skus={}, channels={})
    summary = summarize(user_id, raw, now_ms, config.state.windows_days, config.state.retention_days)
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
                        "new": value, "event_time": iso(profile.get("le", now_ms))})
            previous[dimension] = value
    return out
