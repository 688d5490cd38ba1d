"""Population statistics: the exact counts per score and per tier value, the
per-score and raw-value indexes, and the snapshot of the means (and quantile cut
points) that every evaluation scores against, with its pending means-shift sweep.

The counts and indexes are written by the commit (tiers.lua's "apply", see
store.py); this module reads them, takes snapshots and names the users a new
snapshot may move. What a snapshot moves and the report are pure (`Sweep`,
`population_report`).

Means shift: evaluations score high/low against the snapshot, not live counts,
so every user is judged against the same means. A new snapshot (from the exact
counts; quantile cut points from the raw-value sorted sets) is stored with the
sweep it calls for: the scores whose high/low flips and the raw-value ranges whose
quantile score changes, merged with any sweep left unfinished. The store
re-evaluates exactly those users, one bounded slice per timer tick: `sweep_slice`
names the next users from where the sweep stands (`sweep_at`: which set, shard and
SCAN cursor), and `advance` records the slice as done (sweep_step.lua beside this
module) only if the sweep still stands where the slice started, so workers sweeping
at once never skip a slice. A crash mid-slice leaves the position where it was, and
the slice is redone (idempotently). SCAN returns every member present for the whole
walk: a user left to re-evaluate stays in its set until re-evaluated, so none is
missed; one in several sets, or met twice, is evaluated again and changes nothing.
Lag: up to one snapshot interval plus the sweep's slices (`decay.due_batch` users or
raw values examined per tick).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import msgspec

from tierflow.pipeline import lua
from tierflow.pipeline.lua import Redis
from tierflow.pipeline.tiering.config import TieringConfig
from tierflow.pipeline.tiering.keys import SNAPSHOT_KEY, Shards
from tierflow.pipeline.tiering.rfm import (
    DIMENSIONS,
    SCORES,
    SEGMENT_IDS,
    Population,
    cuts_from_ranked,
    quantile_ranks,
)


class Sweep(msgspec.Struct, frozen=True):
    """The users a snapshot may move, by what moved."""

    flips: dict[str, list[int]] = msgspec.field(default_factory=dict)  # dim -> scores whose high/low flipped
    # dim -> raw [lo, hi) ranges whose quantile score moved (None: unbounded)
    ranges: dict[str, list[list[int | None]]] = msgspec.field(default_factory=dict)

    @classmethod
    def between(cls, old: Population, new: Population) -> Sweep:
        flips = {dim: [s for s in SCORES if old.high(dim, s) != new.high(dim, s)] for dim in DIMENSIONS}
        ranges: dict[str, list[list[int | None]]] = {}
        for dim in DIMENSIONS:
            before, after = old.cuts.get(dim), new.cuts.get(dim)
            if before == after:
                continue
            # From or to the threshold table every scored user may move.
            ranges[dim] = [[None, None]] if before is None or after is None else [
                [min(a, b), max(a, b)] for a, b in zip(before, after, strict=True) if a != b
            ]
        return cls({dim: scores for dim, scores in flips.items() if scores}, ranges)

    def merge(self, later: Sweep) -> Sweep:
        flips = dict(self.flips)
        for dim, scores in later.flips.items():
            flips[dim] = sorted(set(flips.get(dim, [])) | set(scores))
        ranges = dict(self.ranges)
        for dim, spans in later.ranges.items():
            ranges[dim] = ranges.get(dim, []) + spans
        return Sweep(flips, ranges)


@dataclass(frozen=True)
class Snapshot:
    """The population snapshot as stored under SNAPSHOT_KEY."""

    population: Population
    # When it was taken (the clock's time); -1 before the first snapshot.
    taken_ms: int
    id: str | None
    # The sweep it still calls for, None once done.
    sweep: Sweep | None
    # Where the sweep stands ("set:shard:cursor"), "" at its beginning.
    sweep_at: str = ""

    @classmethod
    def of(cls, stored: Mapping[str, str]) -> Snapshot:
        doc, sweep = stored.get("population"), stored.get("sweep")
        return cls(
            population=Population() if doc is None else msgspec.json.decode(doc, type=Population),
            taken_ms=int(stored.get("taken_ms", "-1")),
            id=stored.get("id"),
            sweep=None if sweep is None else msgspec.json.decode(sweep, type=Sweep),
            sweep_at=stored.get("sweep_at", ""),
        )


@dataclass(frozen=True)
class SweepSet:
    """One set of users a sweep walks, per shard: a per-score set, or a raw-value sorted
    set of which only the members in `spans` ([lo, hi), None: unbounded) count."""

    keys: tuple[str, ...]
    spans: tuple[tuple[int | None, int | None], ...] | None = None

    def wants(self, raw: float) -> bool:
        return self.spans is None or any(
            (lo is None or raw >= lo) and (hi is None or raw < hi) for lo, hi in self.spans
        )


@dataclass(frozen=True)
class SweepSlice:
    """Users of the pending sweep to re-evaluate, and where the sweep stands after them."""

    snapshot_id: str
    started_at: str
    ends_at: str  # "" once the sweep is finished
    users: list[str]


@dataclass(frozen=True)
class PopulationShift:
    """A new snapshot and which users it may move."""

    snapshot_id: str
    population: Population
    flips: dict[str, list[int]]
    ranges: dict[str, list[list[int | None]]]


def population_report(
    counts: Mapping[str, int], population: Population, tier_names: Iterable[str]
) -> dict[str, object]:
    """Counts per value of every dimension (segment counts add up to scored_users),
    and the means in use."""

    def values(dim: str, names: Iterable[str]) -> dict[str, int]:
        known = {name: counts.get(f"{dim}:{name}", 0) for name in names}
        # Values from an earlier configuration (e.g. a renamed tier) still show.
        for key, n in counts.items():
            if key.startswith(f"{dim}:") and n:
                known.setdefault(key.split(":", 1)[1], n)
        return known

    return {
        "scored_users": sum(counts.get(f"r:{s}", 0) for s in SCORES),
        "users": counts.get("users", 0),
        "means": {dim: population.mean(dim) for dim in DIMENSIONS},
        "segments": values("segment", SEGMENT_IDS),
        "lifecycle": values("lifecycle", ("new", "first_purchase", "repeat", "vip")),
        "membership": values("membership", tier_names),
        "aipl": values("aipl", ("aware", "interest", "purchase", "loyalty")),
    }


class PopulationStats:
    def __init__(self, client: Redis, shards: Shards, tiering: TieringConfig) -> None:
        self.client = client
        self.shards = shards
        self.tiering = tiering
        self._sweep_step = lua.register(client, __file__, "sweep_step")

    def counts(self) -> dict[str, int]:
        """Exact population counts summed over shards."""
        pipe = self.client.pipeline(transaction=False)
        for shard in self.shards.all:
            pipe.hgetall(shard.counts)
        total: dict[str, int] = defaultdict(int)
        for row in pipe.execute():
            for name, value in row.items():
                total[name] += int(value)
        return dict(total)

    def snapshot(self) -> Snapshot:
        return Snapshot.of(self.client.hgetall(SNAPSHOT_KEY))

    def taken_ms(self) -> int:
        """When the current snapshot was taken; -1 before the first."""
        return int(self.client.hget(SNAPSHOT_KEY, "taken_ms") or -1)

    def snapshot_due(self, cadence_ms: int) -> bool:
        """Whether the snapshot interval has passed on the cadence clock."""
        taken = self.client.hget(SNAPSHOT_KEY, "cadence_ms")
        return taken is None or int(taken) + self.tiering.population.snapshot_interval_ms <= cadence_ms

    def snapshot_means(self, now_ms: int, cadence_ms: int | None = None) -> PopulationShift:
        """Take a snapshot of the means (and quantile cut points) and record which
        users it moves as the snapshot's pending sweep (merged with any unfinished one,
        which starts again from the beginning)."""
        counts = self.counts()
        score_counts = {dim: [counts.get(f"{dim}:{s}", 0) for s in SCORES] for dim in DIMENSIONS}
        modes = {"r": self.tiering.recency.mode, "f": self.tiering.frequency.mode,
                 "m": self.tiering.monetary.mode}
        cuts = {dim: c for dim in DIMENSIONS if modes[dim] == "quantiles"
                if (c := self._quantile_cuts(dim)) is not None}
        new = Population(counts=score_counts, cuts=cuts)
        old = self.snapshot()
        sweep = (old.sweep or Sweep()).merge(Sweep.between(old.population, new))
        snapshot_id = uuid.uuid4().hex
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(SNAPSHOT_KEY, mapping={
            "id": snapshot_id,
            # Commits refuse evaluations made against an older snapshot than the user's last.
            "taken_ms": max(now_ms, old.taken_ms + 1),
            "cadence_ms": now_ms if cadence_ms is None else cadence_ms,
            "population": msgspec.json.encode(new),
            "sweep": msgspec.json.encode(sweep),
        })
        pipe.hdel(SNAPSHOT_KEY, "sweep_at")
        pipe.execute()
        return PopulationShift(snapshot_id, new, sweep.flips, sweep.ranges)

    def sweep_sets(self, sweep: Sweep) -> list[SweepSet]:
        """The sets a sweep walks, in a fixed order (positions index into it)."""
        sets = [SweepSet(tuple(shard.score_set(dim, s) for shard in self.shards.all))
                for dim in sorted(sweep.flips) for s in sweep.flips[dim]]
        sets += [SweepSet(tuple(shard.raw_values(dim) for shard in self.shards.all),
                          tuple((lo, hi) for lo, hi in sweep.ranges[dim]))
                 for dim in sorted(sweep.ranges)]
        return sets

    def sweep_slice(self, limit: int) -> SweepSlice | None:
        """The next slice of the pending sweep, from where it stands: about `limit` members
        examined (one SCAN page may pass it). None when no sweep is pending."""
        snapshot = self.snapshot()
        if snapshot.sweep is None or snapshot.id is None:
            return None
        sets = self.sweep_sets(snapshot.sweep)
        at, shard, cursor = (int(n) for n in snapshot.sweep_at.split(":")) if snapshot.sweep_at else (0, 0, 0)
        users: list[str] = []
        examined = 0
        while at < len(sets) and examined < limit:
            chosen = sets[at]
            key = chosen.keys[shard]
            if chosen.spans is None:
                cursor, members = self.client.sscan(key, cursor, count=limit - examined)
                users += members
            else:
                cursor, members = self.client.zscan(key, cursor, count=limit - examined)
                users += [user for user, raw in members if chosen.wants(raw)]
            examined += len(members)
            if cursor == 0:
                shard += 1
                if shard == len(chosen.keys):
                    at, shard = at + 1, 0
        ends_at = f"{at}:{shard}:{cursor}" if at < len(sets) else ""
        return SweepSlice(snapshot.id, snapshot.sweep_at, ends_at, users)

    def advance(self, step: SweepSlice) -> bool:
        """Record the slice as done; False if the sweep had moved on (a newer snapshot, or
        another worker's slice): its users were evaluated anyway, which is harmless."""
        return bool(self._sweep_step(keys=[SNAPSHOT_KEY], args=[step.snapshot_id, step.started_at, step.ends_at]))

    def users_with_score(self, dim: str, score: int) -> Iterator[str]:
        """Users whose stored score on dim is `score` (exact per-score sets)."""
        for shard in self.shards.all:
            yield from self.client.sscan_iter(shard.score_set(dim, score), count=1000)

    def _quantile_cuts(self, dim: str) -> list[int] | None:
        """Quantile cut points over all shards, by order statistics: the k-th smallest
        raw value is found by binary search on value with ZCOUNT summed over shards."""
        keys = [shard.raw_values(dim) for shard in self.shards.all]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
            pipe.zrange(key, -1, -1, withscores=True)
        rows = pipe.execute()
        n = sum(rows[0::3])
        if n == 0:
            return None
        lowest = min(int(r[0][1]) for r in rows[1::3] if r)
        highest = max(int(r[0][1]) for r in rows[2::3] if r)

        def kth(rank: int) -> int:
            lo, hi = lowest, highest
            while lo < hi:
                mid = (lo + hi) // 2
                pipe = self.client.pipeline(transaction=False)
                for key in keys:
                    pipe.zcount(key, "-inf", mid)
                if sum(pipe.execute()) >= rank + 1:
                    hi = mid
                else:
                    lo = mid + 1
            return lo

        return cuts_from_ranked([kth(rank) for rank in quantile_ranks(n)])

    def report(self) -> dict[str, object]:
        """`tierflow segments --json`, from the stored tiers."""
        return population_report(self.counts(), self.snapshot().population, self.tiering.tier_names)
