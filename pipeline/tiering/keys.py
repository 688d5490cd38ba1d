"""Where tiering keeps its data in Redis: the key names, and which population
shard holds a user. Pure: names only, no I/O.

Every Lua call touches keys of one hash tag only, so tiering runs unchanged on
Redis Cluster. Every name below is preceded by the deployment's namespace
(pipeline/keyspace.py).

Per user (hash tag `{u:ID}`, beside the state store's keys):
  `{u:ID}:tier`    current value and version counter per dimension (v:<dim>,
                   n:<dim>), scores (s:r/f/m), raw RFM values, next boundary
                   (nb), the instant, event count and population snapshot
                   evaluated (asof, basis, pop), the change and delta counters
                   (seq, dseq), and the evaluation (doc).
  `{u:ID}:outbox`  change records (JSON, schemas/tier.changes.json) not yet
                   acknowledged as published.
  `{u:ID}:pend`    population deltas not yet applied (dseq -> JSON).
  `{u:ID}:paid`    orders of the paid-membership SKU (event id -> "ts_ms:qty").

Population, split over `population.shards` hash tags `{tf:t:N}` by crc32(user):
  `:counts`        users per score ("r:1".."m:5") and per value of each dimension
                   ("segment:important_value", ...), and "users".
  `:applied`       user -> last applied delta seq.
  `:due`           user -> next boundary ms (the decay schedule).
  `:outbox`        user -> last change seq appended (who may have unpublished changes).
  `:s:<dim>:<n>`   users holding score n on dimension dim (for the means-shift sweep).
  `:raw:<dim>`     user -> raw value (last purchase day, purchases, cents) for quantiles.

`tf:tier:pop` (SNAPSHOT_KEY) holds the population snapshot every evaluation
scores against, and its pending means-shift sweep.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from tierflow.pipeline import keyspace
from tierflow.pipeline.state.summary import user_tag
from tierflow.pipeline.tiering.rfm import DIMENSIONS, SCORES

SNAPSHOT_KEY = keyspace.key("tf:tier:pop")


@dataclass(frozen=True, slots=True)
class TierKeys:
    tier: str
    outbox: str
    pending: str
    paid: str

    @classmethod
    def of(cls, user_id: str) -> TierKeys:
        tag = user_tag(user_id)
        return cls(f"{tag}:tier", f"{tag}:outbox", f"{tag}:pend", f"{tag}:paid")


@dataclass(frozen=True, slots=True)
class ShardKeys:
    counts: str
    applied: str
    due: str
    outbox: str
    score_sets: tuple[str, ...]  # r1..r5, f1..f5, m1..m5
    raw: tuple[str, ...]  # r, f, m

    @classmethod
    def of(cls, shard: int) -> ShardKeys:
        tag = keyspace.key("{tf:t:" + str(shard) + "}")
        return cls(
            f"{tag}:counts", f"{tag}:applied", f"{tag}:due", f"{tag}:outbox",
            tuple(f"{tag}:s:{dim}:{s}" for dim in DIMENSIONS for s in SCORES),
            tuple(f"{tag}:raw:{dim}" for dim in DIMENSIONS),
        )

    def as_list(self) -> list[str]:
        return [self.counts, self.applied, self.due, self.outbox, *self.score_sets, *self.raw]

    def score_set(self, dim: str, score: int) -> str:
        return self.score_sets[DIMENSIONS.index(dim) * len(SCORES) + score - 1]

    def raw_values(self, dim: str) -> str:
        return self.raw[DIMENSIONS.index(dim)]


@dataclass(frozen=True, slots=True)
class Shards:
    """The population's shards, and which one holds a user."""

    all: tuple[ShardKeys, ...]

    @classmethod
    def of(cls, count: int) -> Shards:
        return cls(tuple(ShardKeys.of(n) for n in range(count)))

    def holding(self, user_id: str) -> ShardKeys:
        return self.all[zlib.crc32(user_id.encode()) % len(self.all)]
