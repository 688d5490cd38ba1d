"""Redis state store: applies encoded events with one Lua call per user and
source partition, all calls of a consumer batch in one pipelined round trip."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import orjson
import redis

from tierflow.pipeline import lua
from tierflow.pipeline.state.summary import RawState, UserKeys

USERS_KEY = "tf:users"


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)


class StateStore:
    def __init__(self, client: redis.Redis, retention_days: int) -> None:
        self.client = client
        self.retention_days = retention_days
        self._apply = lua.register(client, __file__, "apply")

    def apply(self, groups: Mapping[tuple[str, str], Iterable[list[object]]]) -> int:
        """Apply events grouped by (user_id, "topic:partition"); returns how many were new."""
        if not groups:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for (user_id, source), events in groups.items():
            self._apply(
                keys=UserKeys.of(user_id).as_list(),
                args=[source, self.retention_days, orjson.dumps(list(events))],
                client=pipe,
            )
        pipe.sadd(USERS_KEY, *{user for user, _ in groups})
        results = pipe.execute()
        return sum(results[:-1])

    def read(self, user_id: str) -> RawState | None:
        return self.read_many([user_id])[user_id]

    def read_many(self, user_ids: list[str]) -> dict[str, RawState | None]:
        """Several users' state in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for user_id in user_ids:
            keys = UserKeys.of(user_id)
            for key in (keys.profile, keys.days, keys.categories, keys.skus, keys.channels):
                pipe.hgetall(key)
        replies = pipe.execute()
        states: dict[str, RawState | None] = {}
        for i, user_id in enumerate(user_ids):
            profile, days, categories, skus, channels = replies[5 * i : 5 * i + 5]
            states[user_id] = RawState(profile, days, categories, skus, channels) if profile else None
        return states

    def user_count(self) -> int:
        return int(self.client.scard(USERS_KEY))

    def users(self) -> Iterable[str]:
        yield from self.client.sscan_iter(USERS_KEY, count=1000)
