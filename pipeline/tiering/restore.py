"""Tiers rebuilt after Redis lost them (`tierflow rebuild`), without publishing a
change twice.

The state is rebuilt first, from the input topics, in full. Then:

1. `evaluate_everyone`: every user is evaluated once on their complete state, the
   population snapshot is taken and the users it moves are swept: the same
   commits a worker makes, so the values, scores, population counts and decay
   schedule are what a worker would hold. The change records these commits
   append start from nothing (versions 1, 2, ...) and are not news.
2. `TierRebase` puts each user back on the history `tier.changes` already carries:
   the version counters continue from the last published versions (folded by
   `fold`), the commits' records are dropped, and a record is kept only where
   the value now differs from the last one published (`reconcile`): a change that
   never reached the topic before Redis was lost, or one that time or lost history
   (input retention) made since. Those wait in the outboxes for the worker.

Evaluating the replay batch by batch instead would walk every customer through
their history again and publish it, with new versions, and the rewards of tier
rules would fire for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from tierflow.pipeline.ingest.validate import parse_ts
from tierflow.pipeline.lua import Pipeline, Redis
from tierflow.pipeline.state.summary import UserKeys, iso
from tierflow.pipeline.tiering.evaluate import TRACKED, Evaluation
from tierflow.pipeline.tiering.keys import Shards, TierKeys
from tierflow.pipeline.tiering.store import TierStore
from tierflow.schemas.tier_changes import EVENT_REASONS, ChangeScores, Reason, TierChange


@dataclass
class Published:
    """What `tier.changes` says about one user."""

    values: dict[str, str | None] = field(default_factory=dict)  # dimension -> last value published
    versions: dict[str, int] = field(default_factory=dict)
    seq: int = 0
    # Event time of the newest change caused by events: later events were not published yet.
    event_ms: int = -1


def fold(published: dict[str, Published], change: TierChange) -> None:
    """Add one record of the topic (any order; a record seen twice changes nothing)."""
    p = published.setdefault(change.user_id, Published())
    if change.version > p.versions.get(change.dimension, 0):
        p.versions[change.dimension] = change.version
        p.values[change.dimension] = change.new
    p.seq = max(p.seq, change.seq)
    if change.reason in EVENT_REASONS:
        p.event_ms = max(p.event_ms, parse_ts(change.event_time))


def reconcile(user_id: str, published: Published | None, evaluation: Evaluation | None,
              newest_event_ms: int | None) -> list[TierChange]:
    """The changes to publish so that the topic ends at the user's evaluated values:
    one per dimension whose value differs from the last published one, numbered on
    from the published versions. Pure."""
    if evaluation is None:  # no retained event: nothing to say about the user now
        return []
    prior = published or Published()
    by_events = newest_event_ms is not None and newest_event_ms > prior.event_ms
    reason: Reason = "event" if by_events else "time_decay"
    event_time = iso(newest_event_ms if by_events and newest_event_ms is not None else evaluation.as_of_ms)
    s = evaluation.scores
    scores = ChangeScores(s.r, s.f, s.m) if s else ChangeScores(None, None, None)
    records: list[TierChange] = []
    for dim in TRACKED:
        old, new = prior.values.get(dim), evaluation.value(dim)
        if old == new:
            continue
        records.append(TierChange(
            user_id=user_id, dimension=dim, old=old, new=new,  # type: ignore[arg-type]
            version=prior.versions.get(dim, 0) + 1, seq=prior.seq + len(records) + 1, reason=reason,
            scores=scores, points=evaluation.membership.points,
            repurchases=evaluation.lifecycle.repurchases, event_time=event_time,
        ))
    return records


def evaluate_everyone(store: TierStore, users: Sequence[str], now_ms: int, cadence_ms: int,
                      paid: Mapping[str, list[list[object]]], show: Callable[[int], None]) -> None:
    """Step 1: evaluate each user on their complete state (recording their paid
    membership orders), snapshot the population, sweep the users it moves.
    `show(done)` after each chunk of users."""
    size = store.tiering.decay.due_batch
    for start in range(0, len(users), size):
        chunk = users[start:start + size]
        store.evaluate_users(chunk, now_ms, "config_change", paid={u: paid[u] for u in chunk if u in paid})
        show(start + len(chunk))
    store.stats.snapshot_means(now_ms, cadence_ms)
    store.sweep(now_ms, "config_change")


class TierRebase:
    """Step 2, for users in chunks (one round trip to read, one to write)."""

    def __init__(self, client: Redis, shards: Shards) -> None:
        self.client = client
        self.shards = shards

    def rebase(self, users: Sequence[str], published: Mapping[str, Published]) -> list[TierChange]:
        """Returns the changes left to publish."""
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            pipe.hget(TierKeys.of(user).tier, "doc")
            pipe.hget(UserKeys.of(user).profile, "ls")
        replies = pipe.execute()
        pending: list[TierChange] = []
        pipe = self.client.pipeline(transaction=False)
        for n, user in enumerate(users):
            doc, newest = replies[2 * n], replies[2 * n + 1]
            evaluation = None if doc is None else msgspec.json.decode(doc, type=Evaluation)
            prior = published.get(user) or Published()
            records = reconcile(user, prior, evaluation, None if newest is None else int(newest))
            self._write(pipe, user, prior, records)
            pending += records
        pipe.execute()
        return pending

    def _write(self, pipe: Pipeline, user: str, prior: Published, records: list[TierChange]) -> None:
        keys = TierKeys.of(user)
        versions = {dim: prior.versions.get(dim, 0) for dim in TRACKED} | {r.dimension: r.version for r in records}
        seq = records[-1].seq if records else prior.seq
        pipe.hset(keys.tier, mapping={**{f"n:{dim}": str(v) for dim, v in versions.items()}, "seq": str(seq)})
        pipe.delete(keys.outbox)
        listed = self.shards.holding(user).outbox
        if records:
            pipe.rpush(keys.outbox, *(msgspec.json.encode(r) for r in records))
            pipe.zadd(listed, {user: seq})
        else:
            pipe.zrem(listed, user)
