"""The time-decay schedule: per population shard, users by the instant their
tiers next change with no new event (the evaluation's next boundary).

The commit writes it (tiers.lua's "apply", see store.py); this module reads
who is due and unschedules users whose state is gone.
"""

from __future__ import annotations

from collections.abc import Iterable

from tierflow.pipeline.lua import Redis
from tierflow.pipeline.state.summary import UserKeys
from tierflow.pipeline.tiering.keys import Shards


class DecaySchedule:
    def __init__(self, client: Redis, shards: Shards) -> None:
        self.client = client
        self.shards = shards

    def due(self, now_ms: int, limit: int) -> list[tuple[str, int]]:
        """Up to `limit` users whose next boundary is at or before now_ms, earliest first
        (the earliest of each shard: a large due set costs no more than a small one)."""
        per_shard = -(-limit // len(self.shards.all))
        pipe = self.client.pipeline(transaction=False)
        for shard in self.shards.all:
            pipe.zrangebyscore(shard.due, "-inf", now_ms, start=0, num=per_shard, withscores=True)
        rows = [(u, int(s)) for shard_rows in pipe.execute() for u, s in shard_rows]
        return sorted(rows, key=lambda r: (r[1], r[0]))[:limit]

    def drop_erased(self, user_ids: Iterable[str]) -> None:
        """Unschedule those of these users whose state is gone (erased): they must not
        stay due forever."""
        users = list(user_ids)
        if not users:
            return
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            pipe.exists(UserKeys.of(user).profile)
        gone = [user for user, exists in zip(users, pipe.execute(), strict=True) if not exists]
        for user in gone:
            pipe.zrem(self.shards.holding(user).due, user)
        pipe.execute()
