"""The tier-change outbox: each user's change records not yet acknowledged as
published, and the per-shard index of users who may hold some.

The commit (tiers.lua, see store.py) appends the records and lists the user; this
module hands them to the publisher and trims them (outbox.lua beside it).

Publication (agents/outputs.py): the owner of the user's lane reads the records
(`pending`), sends them (key: user id) in a Kafka transaction, and after the
commit calls `ack({user: last seq sent})`, which trims the outbox and, unless a
later change arrived meanwhile, unlists the user from the shard's index. The
index therefore names every user with unacknowledged records, whatever happened
to the process that wrote them; `scan` walks it page by page.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping

import msgspec

from tierflow.pipeline import lua
from tierflow.pipeline.lua import Pipeline, Redis
from tierflow.pipeline.tiering import calls
from tierflow.pipeline.tiering.keys import Shards, TierKeys
from tierflow.schemas.tier_changes import TierChange

_change = msgspec.json.Decoder(TierChange)


def decode_changes(rows: Iterable[str]) -> list[TierChange]:
    return [_change.decode(row) for row in rows]


class ChangeOutbox:
    def __init__(self, client: Redis, shards: Shards) -> None:
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

    def tidy(self, users: Collection[str]) -> set[str]:
        """Those of these users with unacknowledged records. The others leave the index
        (one interrupted between its ack and unlist stays listed) unless a change was
        appended meanwhile: that listing outranks the seq read here."""
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            # The seq first: whatever is appended after it has a higher one.
            pipe.hget(TierKeys.of(user).tier, "seq")
            pipe.llen(TierKeys.of(user).outbox)
        replies = pipe.execute()
        holding = {user for user, waiting in zip(users, replies[1::2], strict=True) if waiting}
        self.unlist({user: int(seq or 0) for user, seq, waiting in zip(users, replies[::2], replies[1::2], strict=True)
                     if not waiting})
        return holding

    def ack(self, published: Mapping[str, int]) -> int:
        """Drop each user's records up to the given seq (published and committed), then
        unlist them (only once every drop went through). Idempotent. Returns how many
        records were dropped."""
        if not published:
            return 0

        def drop(pipe: Pipeline) -> None:
            for user, seq in published.items():
                calls.call(pipe, self._script, [TierKeys.of(user).outbox], ["ack", seq])

        dropped = sum(calls.run(self.client, [self._script], drop))
        self.unlist(published)
        return dropped

    def unlist(self, acknowledged: Mapping[str, int]) -> None:
        """Take these users, acknowledged up to the given seqs, off their shards' indexes
        (unless a later change was listed): one call per shard."""
        by_shard: dict[str, list[object]] = defaultdict(list)
        for user, seq in acknowledged.items():
            by_shard[self.shards.holding(user).outbox] += [user, seq]
        if not by_shard:
            return

        def queue(pipe: Pipeline) -> None:
            for index, pairs in by_shard.items():
                calls.call(pipe, self._script, [index], ["unlist", *pairs])

        calls.run(self.client, [self._script], queue)

    def users(self, limit: int) -> list[str]:
        """Users who may hold unpublished changes, up to limit."""
        pipe = self.client.pipeline(transaction=False)
        for shard in self.shards.all:
            pipe.zrange(shard.outbox, 0, limit - 1)
        users = [u for rows in pipe.execute() for u in rows]
        return users[:limit]

    def scan(self, cursors: list[int], count: int) -> dict[str, int]:
        """One step of a walk over every user who may hold unpublished changes: up to
        `count` users of each shard from its cursor, each with the seq of the last change
        listed. `cursors` (one per shard, all 0 to start) is advanced in place; all 0 again
        means the walk is complete (users past `count` in a step wait for the next walk)."""
        pipe = self.client.pipeline(transaction=False)
        for shard, cursor in zip(self.shards.all, cursors, strict=True):
            pipe.zscan(shard.outbox, cursor, count=count)
        found: dict[str, int] = {}
        for n, (cursor, rows) in enumerate(pipe.execute()):
            cursors[n] = int(cursor)
            found.update((user, int(seq)) for user, seq in rows[:count])
        return found
