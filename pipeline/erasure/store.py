"""A customer erased from Redis: every key under their hash tag (state, tiers, wallet,
outboxes, lane), and their part of the shared structures, so that what remains is exactly
what it would be had they never existed:

- the population shard (`{tf:t:N}`): their contribution to the counts (the users count,
  the per-score and per-value counts) as the shard last applied it, the per-score sets,
  the raw-value sets, the decay schedule, the outbox index and their applied mark;
- the reward indexes (`{rw}:users`, `:outbox`, `:expiry`) and their reservations in every
  campaign. What the campaign spent on them (budget, stock, pool codes) stays spent: an
  anonymous total;
- the known-users set (`tf:users`) and their output lane's pointer.

The shard side first, then the user's keys: a rerun after a crash finds the shard has no
applied mark for them (no contribution left) and completes the rest. Run with the workers
stopped (`tierflow forget` checks), so nothing re-creates the customer meanwhile.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from tierflow.pipeline.config.domain import Config
from tierflow.pipeline.lanes import Lanes
from tierflow.pipeline.lua import Redis
from tierflow.pipeline.rewards.ledger import EXPIRY_INDEX, OUTBOX_INDEX, USERS, CampaignKeys
from tierflow.pipeline.state.store import USERS_KEY
from tierflow.pipeline.state.summary import user_tag
from tierflow.pipeline.tiering.keys import ShardKeys, Shards, TierKeys
from tierflow.pipeline.tiering.rfm import DIMENSIONS

# Keys per SCAN step.
SCAN_COUNT = 1000
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


@dataclass(frozen=True)
class Contribution:
    """What a user adds to their population shard's counts."""

    counted: bool = False  # in the "users" count
    values: dict[str, str] = field(default_factory=dict)  # dimension -> value
    scores: dict[str, int] = field(default_factory=dict)  # r/f/m -> score


def contribution(tier: Mapping[str, str], pending: Iterable[Mapping[str, Any]], applied: int | None) -> Contribution:
    """The user's part of the shard's counts: their committed tiers (`{u:ID}:tier`) with the
    deltas the shard has not applied yet (seq above `applied`) taken back, newest first.
    No applied mark: the shard never counted them (or an earlier erasure took them out)."""
    if applied is None:
        return Contribution()
    values = {k[2:]: v for k, v in tier.items() if k.startswith("v:")}
    scores = {k[2:]: int(v) for k, v in tier.items() if k.startswith("s:")}
    for delta in sorted(pending, key=lambda d: -int(d["seq"])):
        if int(delta["seq"]) <= applied:
            continue
        for dim, (old, _new) in (delta.get("dims") or {}).items():
            _set(values, dim, old)
        for dim, (old, _new) in (delta.get("scores") or {}).items():
            _set(scores, dim, None if old is None else int(old))
    return Contribution(applied >= 1, values, scores)


def _set(into: dict[str, Any], key: str, value: object) -> None:
    if value is None:
        into.pop(key, None)
    else:
        into[key] = value


def user_pattern(user_id: str) -> str:
    """SCAN pattern of every key under the user's hash tag, whatever characters the id holds."""
    return _GLOB_SPECIAL.sub(r"\\\1", user_tag(user_id)) + "*"


@dataclass
class Erased:
    """What the erasure removed from Redis."""

    keys: int = 0
    counted: bool = False  # was in the population counts
    reservations: int = 0


class ErasureStore:
    def __init__(self, client: Redis, config: Config, lanes: int) -> None:
        """`client` from `state.store.connect`; `lanes`: the output lanes (input partitions)."""
        self.client = client
        self.config = config
        self.shards = Shards.of(config.tiering.population.shards)
        self.lanes = Lanes(client, lanes)

    def user_keys(self, user_id: str) -> list[str]:
        """Every key under the user's hash tag."""
        return list(self.client.scan_iter(match=user_pattern(user_id), count=SCAN_COUNT))

    def erase(self, user_id: str) -> Erased:
        erased = Erased()
        erased.counted = self._erase_from_shard(user_id)
        erased.reservations = self._erase_reservations(user_id)
        lane = self.client.get(Lanes.key(user_id))
        if lane is not None:
            self.lanes.release({int(lane): [user_id]})
        pipe = self.client.pipeline(transaction=False)
        pipe.srem(USERS_KEY, user_id)
        pipe.srem(USERS, user_id)
        pipe.srem(OUTBOX_INDEX, user_id)
        pipe.zrem(EXPIRY_INDEX, user_id)
        pipe.execute()
        keys = self.user_keys(user_id)
        for start in range(0, len(keys), SCAN_COUNT):
            erased.keys += self.client.unlink(*keys[start:start + SCAN_COUNT])
        return erased

    def _erase_from_shard(self, user_id: str) -> bool:
        shard = self.shards.holding(user_id)
        keys = TierKeys.of(user_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(keys.tier)
        pipe.hvals(keys.pending)
        pipe.hget(shard.applied, user_id)
        tier, pending, applied = pipe.execute()
        part = contribution(tier, [orjson.loads(d) for d in pending], None if applied is None else int(applied))
        self._subtract(shard, user_id, part)
        return part.counted

    def _subtract(self, shard: ShardKeys, user_id: str, part: Contribution) -> None:
        """One transaction on the shard's hash tag."""
        pipe = self.client.pipeline(transaction=True)
        if part.counted:
            pipe.hincrby(shard.counts, "users", -1)
        for dim, value in part.values.items():
            pipe.hincrby(shard.counts, f"{dim}:{value}", -1)
        for dim, score in part.scores.items():
            pipe.hincrby(shard.counts, f"{dim}:{score}", -1)
            pipe.srem(shard.score_set(dim, score), user_id)
        for dim in DIMENSIONS:
            pipe.zrem(shard.raw_values(dim), user_id)
        pipe.zrem(shard.due, user_id)
        pipe.zrem(shard.outbox, user_id)
        pipe.hdel(shard.applied, user_id)
        pipe.execute()

    def _erase_reservations(self, user_id: str) -> int:
        """The user's reservations (keyed by [rule, user, trigger]) in every campaign."""
        removed = 0
        for campaign in self.config.rewards.campaigns:
            key = CampaignKeys.of(campaign).reservations
            theirs = [name for name, _ in self.client.hscan_iter(key, count=SCAN_COUNT) if _holder(name) == user_id]
            if theirs:
                removed += self.client.hdel(key, *theirs)
        return removed


def _holder(idempotency_key: str) -> str | None:
    """The user of a reservation's idempotency key (rewards/rules.py: JSON [rule, user, trigger])."""
    try:
        parts = orjson.loads(idempotency_key)
    except orjson.JSONDecodeError:
        return None
    return parts[1] if isinstance(parts, list) and len(parts) == 3 else None
