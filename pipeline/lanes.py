"""Lanes: which partition of the output topics carries a user's records.

Every tier change and reward record of a user goes to partition `lane` of
`tier.changes` and `reward.grants`, and only the worker that owns the lane
publishes it (agents/outputs.py explains why that makes publication exactly
once). This module keeps the Redis side, on keys of one hash tag per call:

- `{u:<id>}:lane`, the user's lane. It is written once and never changed, so a
  user's records always go to one partition, in order, whoever wrote them, and
  still do after partitions are added. It is the input partition of the first
  batch the user appeared in, so the worker that reads a user's events usually
  publishes their records too. A user whose first record came from elsewhere
  (the CLI) gets crc32 of the id. The Kafka key's hash is not used: librdkafka's
  default partitioner differs from Java's murmur2, so apps may place a user on
  any partition.
- `{tf:lane:<n>}:users`, users who may have records waiting in lane n: where its
  owner looks. It is only a pointer. The outboxes and their own indexes are the
  truth, and the owner re-reads them now and then, so a pointer lost in a crash
  delays records and loses none.
- `{tf:lane:<n>}:mark`, per topic, the offset after the last record of the lane
  whose outbox entry was acknowledged. A new owner reads the partition back from
  there.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping

from tierflow.pipeline import keyspace
from tierflow.pipeline.lua import Redis
from tierflow.pipeline.state.summary import user_tag


def _tag(lane: int) -> str:
    return keyspace.key("{tf:lane:" + str(lane) + "}")


class Lanes:
    def __init__(self, client: Redis, count: int) -> None:
        """`client` from `state.store.connect` (replies decoded); `count`: how many lanes
        there are (the partitions of the first input topic)."""
        self.client = client
        self.count = count

    @staticmethod
    def key(user_id: str) -> str:
        return f"{user_tag(user_id)}:lane"

    def fallback(self, user_id: str) -> int:
        return zlib.crc32(user_id.encode()) % self.count

    def assign(self, first_partition: Mapping[str, int]) -> None:
        """Give users without a lane the lane of the input partition they arrived on."""
        if not first_partition:
            return
        pipe = self.client.pipeline(transaction=False)
        for user, partition in first_partition.items():
            pipe.set(self.key(user), partition % self.count, nx=True)
        pipe.execute()

    def of(self, users: Collection[str]) -> dict[str, int]:
        """Each user's lane; a user without one gets (and keeps) the fallback."""
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            pipe.set(self.key(user), self.fallback(user), nx=True)
            pipe.get(self.key(user))
        replies = pipe.execute()
        return {user: int(lane) for user, lane in zip(users, replies[1::2], strict=True)}

    def route(self, users: Iterable[str]) -> dict[int, list[str]]:
        """Point each lane's owner at these users, who may have records waiting."""
        by_lane: dict[int, list[str]] = defaultdict(list)
        for user, lane in self.of(list(dict.fromkeys(users))).items():
            by_lane[lane].append(user)
        self.add(by_lane)
        return by_lane

    def add(self, by_lane: Mapping[int, Collection[str]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for lane, users in by_lane.items():
            if users:
                pipe.sadd(f"{_tag(lane)}:users", *users)
        pipe.execute()

    def waiting(self, lanes: Collection[int], limit: int) -> dict[int, list[str]]:
        """Up to `limit` users per lane who may have records waiting (lanes with none left out)."""
        pipe = self.client.pipeline(transaction=False)
        for lane in lanes:
            pipe.srandmember(f"{_tag(lane)}:users", limit)
        return {lane: list(users) for lane, users in zip(lanes, pipe.execute(), strict=True) if users}

    def release(self, by_lane: Mapping[int, Collection[str]]) -> None:
        """Stop pointing at these users. The caller then checks their outboxes and
        adds back anyone with records again: a writer lists a user after writing, so
        whatever it wrote before this call is seen by that check."""
        pipe = self.client.pipeline(transaction=False)
        for lane, users in by_lane.items():
            if users:
                pipe.srem(f"{_tag(lane)}:users", *users)
        pipe.execute()

    def marks(self, lane: int) -> dict[str, int]:
        """Per topic, where a new owner of the lane starts reading back."""
        return {k: int(v) for k, v in self.client.hgetall(f"{_tag(lane)}:mark").items()}

    def advance(self, lane: int, next_offsets: Mapping[str, int]) -> None:
        """After the records below these offsets are acknowledged in their outboxes.
        A mark set back (by a publisher that lost the lane) only lengthens a read-back."""
        if next_offsets:
            self.client.hset(f"{_tag(lane)}:mark", mapping=dict(next_offsets))
