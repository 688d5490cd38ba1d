"""The tier-change outbox: each user's change records not yet acknowledged as
published, and the per-shard index of users who may hold some.

The commit (tiers.lua, see store.py) appends the records and lists the user; this
module hands them to the publisher and trims them (outbox.lua beside it).

Publication: every evaluation returns the user's unacknowledged records
(`Result.outbox`); the publisher claims them (`claim`, so two publishers never
send the same record), sends them (key: user id), and after delivery calls
`ack({user: last seq sent})`, which trims the outbox and, unless a later change
arrived meanwhile, unlists the user from the shard's index. `users()` lists users
whose records were appended but not acknowledged (e.g. the publisher died after
the commit): drain it at start-up and now and then. A crash after delivery and
before the ack re-sends records, which consumers drop by (user_id, dimension,
version).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec
import redis

from tierflow.pipeline import lua
from tierflow.pipeline.tiering.keys import Shards, TierKeys
from tierflow.schemas.tier_changes import TierChange


def decode_changes(rows: Iterable[str]) -> list[TierChange]:
    return [msgspec.json.decode(row, type=TierChange) for row in rows]


class ChangeOutbox:
    def __init__(self, client: redis.Redis, shards: Shards) -> None:
        self.client = client
        self.shards = shards
        self._script = lua.register(client, __file__, "outbox")

    def pending(self, user_ids: Iterable[str]) -> dict[str, list[TierChange]]:
        """Unacknowledged change records per user, oldest first (users with none left out)."""
        users = list(user_ids)
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            pipe.lrange(TierKeys.of(user).outbox, 0, -1)
        return {user: decode_changes(rows) for user, rows in zip(users, pipe.execute(), strict=True) if rows}

    def claim(self, upto: Mapping[str, int], stamp_ms: int) -> list[int]:
        """Claim each user's records up to a seq for publication, stamping the time (for
        crash recovery). Returns, per user in order, the seq claimed before this call:
        only records above it are this caller's to send."""
        pipe = self.client.pipeline(transaction=False)
        for user, seq in upto.items():
            self._script(keys=[TierKeys.of(user).tier], args=["claim", seq, stamp_ms], client=pipe)
        return [int(previous) for previous in pipe.execute()]

    def ack(self, published: Mapping[str, int]) -> int:
        """Drop each user's records up to the given seq (published and flushed).
        Idempotent. Returns how many records were dropped."""
        if not published:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for user, seq in published.items():
            self._script(keys=[TierKeys.of(user).outbox], args=["ack", seq], client=pipe)
        dropped = sum(pipe.execute())
        pipe = self.client.pipeline(transaction=False)
        for user, seq in published.items():
            self._script(keys=[self.shards.holding(user).outbox], args=["unlist", user, seq], client=pipe)
        pipe.execute()
        return dropped

    def users(self, limit: int) -> list[str]:
        """Users who may hold unpublished changes (e.g. after a crash), up to limit."""
        pipe = self.client.pipeline(transaction=False)
        for shard in self.shards.all:
            pipe.zrange(shard.outbox, 0, limit - 1)
        users = [u for rows in pipe.execute() for u in rows]
        return users[:limit]
