"""Redis state store: applies encoded events with one Lua call per user and
source partition, all calls of a consumer batch in one pipelined round trip."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from tierflow.pipeline import keyspace, lua
from tierflow.pipeline.lua import Redis
from tierflow.pipeline.state.config import StateConfig
from tierflow.pipeline.state.summary import MAX_TOTAL, RawState, UserKeys

USERS_KEY = keyspace.key("tf:users")
Group = tuple[str, str]
# How often an idle connection is checked before use (a restarted server or node).
HEALTH_CHECK_S = 30


@dataclass
class Applied:
    """What one apply changed: how many events were new, and each event the script
    refused, by (user_id, source) and its position in that group, with the reason
    (conflicting_duplicate, amount_out_of_range, quantity_out_of_range)."""

    count: int = 0
    refused: dict[tuple[Group, int], str] = field(default_factory=dict)


def connect(url: str) -> Redis:
    """A client for the server at `url`, or for the whole Redis Cluster when that server
    is one of its nodes (REDIS_URL naming any node is enough). A Redis that does not
    answer yet is taken for one server, whose client connects when first used (a worker
    starts without Redis and its stages retry): a cluster must answer when its worker starts."""
    client = redis.Redis.from_url(url, decode_responses=True, health_check_interval=HEALTH_CHECK_S)
    try:
        cluster = _cluster_enabled(client)
    except redis.ConnectionError:
        return client
    if not cluster:
        return client
    client.close()
    return RedisCluster.from_url(url, decode_responses=True, health_check_interval=HEALTH_CHECK_S)


def _cluster_enabled(client: redis.Redis) -> bool:
    try:
        return bool(client.info("cluster").get("cluster_enabled"))
    except redis.exceptions.NoPermissionError:
        # An ACL without INFO: CLUSTER INFO answers on a cluster node and fails elsewhere.
        try:
            client.cluster("info")
        except redis.ResponseError:
            return False
        return True


class StateStore:
    def __init__(
        self, client: Redis, retention_days: int, dedupe_window_hours: int | None = None,
        refund_window_days: int | None = None,
    ) -> None:
        """dedupe_window_hours: how long an event id is remembered (state.dedupe_window_hours);
        readers need not give it, and without it ids are remembered for the retention. Likewise
        refund_window_days, how long orders are kept for their refunds (state.refund_window_days)."""
        self.client = client
        self.retention_days = retention_days
        window_hours = retention_days * 24 if dedupe_window_hours is None else dedupe_window_hours
        self.dedupe_window_min = window_hours * 60
        self.refund_window_days = retention_days if refund_window_days is None else refund_window_days
        self._apply = lua.register(client, __file__, "apply")

    @classmethod
    def of(cls, client: Redis, config: StateConfig) -> StateStore:
        return cls(client, config.retention_days, config.dedupe_window_hours, config.refund_window_days)

    def apply(self, groups: Mapping[Group, Iterable[list[object]]]) -> Applied:
        """Apply events grouped by (user_id, "topic:partition"). A call that fails raises
        (the first failure) once the others are recorded."""
        applied = Applied()
        if not groups:
            return applied
        calls = [(UserKeys.of(user_id).as_list(),
                  [source, self.retention_days, MAX_TOTAL, self.dedupe_window_min, orjson.dumps(list(events)),
                   self.refund_window_days])
                 for (user_id, source), events in groups.items()]
        results = self._send(calls)
        lost = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if lost:
            # Redis lost the script (a restart, a failover): those calls did not run.
            lua.load(self.client, [self._apply])
            for i, result in zip(lost, self._send([calls[i] for i in lost]), strict=True):
                results[i] = result
        done = [(group, result) for group, result in zip(groups, results, strict=True)
                if not isinstance(result, Exception)]
        for group, (count, refused) in done:
            applied.count += count
            for i in range(0, len(refused), 2):
                applied.refused[(group, int(refused[i]) - 1)] = refused[i + 1]
        if done:
            # Only customers whose call went through become known users; the caller retries the rest.
            self.client.sadd(USERS_KEY, *{user for (user, _), _ in done})
        if len(done) < len(results):
            raise next(result for result in results if isinstance(result, Exception))
        return applied

    def _send(self, calls: list[tuple[list[str], list[object]]]) -> list[Any]:
        """The apply calls in one pipelined round trip (per node of a cluster); errors as replies."""
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            lua.call(pipe, self._apply, keys, args)
        return pipe.execute(raise_on_error=False)

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
