"""A user's two outboxes, tier changes (tiering/outbox.py) and reward records
(rewards/outbox.py), as the publisher of the user's lane handles them together
(agents/outputs.py): one read of both per user, and after the Kafka commit one
acknowledgement of both per user (outboxes.lua beside this module), which also
says what is left, so the round needs no second read. The indexes that name users
with waiting records are then tidied in bulk: the change index with one call per
population shard, the reward index with one removal for the round and a check of
the users it removed (a record written meanwhile keeps its user indexed).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from tierflow.pipeline import lua
from tierflow.pipeline.lua import Redis
from tierflow.pipeline.rewards.ledger import Ledger, RewardKeys
from tierflow.pipeline.tiering import calls
from tierflow.pipeline.tiering.keys import TierKeys
from tierflow.pipeline.tiering.outbox import ChangeOutbox, decode_changes
from tierflow.schemas.tier_changes import TierChange


@dataclass(frozen=True, slots=True)
class UserOutboxes:
    """What one user had waiting when read: change records decoded, reward records
    exactly as stored (they are sent and acknowledged as they are)."""

    changes: list[TierChange]
    rewards: list[str]
    keys: tuple[str, str]  # change outbox, reward outbox


@dataclass(slots=True)
class Read:
    """The users read, with records waiting (users with none left out)."""

    users: dict[str, UserOutboxes] = field(default_factory=dict)

    def changes(self) -> list[TierChange]:
        return [change for waiting in self.users.values() for change in waiting.changes]


class Outboxes:
    def __init__(self, client: Redis, changes: ChangeOutbox, ledger: Ledger) -> None:
        self.client = client
        self.changes = changes
        self.ledger = ledger
        self._script = lua.register(client, __file__, "outboxes")

    def read(self, users: Collection[str]) -> Read:
        """Both outboxes of each user, oldest record first: two LRANGEs per user, one round trip."""
        keys = [(TierKeys.of(user).outbox, RewardKeys.of(user).outbox) for user in users]
        pipe = self.client.pipeline(transaction=False)
        for tier_key, reward_key in keys:
            pipe.lrange(tier_key, 0, -1)
            pipe.lrange(reward_key, 0, -1)
        replies = pipe.execute()
        read = Read()
        for n, (user, user_keys) in enumerate(zip(users, keys, strict=True)):
            rows, rewards = replies[2 * n], replies[2 * n + 1]
            if rows or rewards:
                read.users[user] = UserOutboxes(decode_changes(rows), rewards, user_keys)
        return read

    def ack(self, read: Read, users: Collection[str]) -> set[str]:
        """After a Kafka transaction carrying `read`'s records of `users` committed: drop
        them from their outboxes and tidy the indexes. Idempotent. Returns the users
        with records left (written since the read)."""
        acked = [(user, read.users[user]) for user in users if user in read.users]
        if not acked:
            return set()

        def queue(pipe: lua.Pipeline) -> None:
            for _user, waiting in acked:
                seq = waiting.changes[-1].seq if waiting.changes else 0
                lua.call(pipe, self._script, waiting.keys, [len(waiting.changes), seq, *waiting.rewards])

        left = calls.run(self.client, [self._script], queue)
        # Unlisted once nothing is left: the shard index's seq check keeps a user whose
        # later change is on its way (appended, not yet listed).
        self.changes.unlist({user: waiting.changes[-1].seq for (user, waiting), (changes, _rewards)
                             in zip(acked, left, strict=True) if waiting.changes and not changes})
        self.ledger.unindex_outbox([user for (user, waiting), (_changes, rewards) in zip(acked, left, strict=True)
                                    if waiting.rewards and not rewards])
        return {user for (user, _waiting), (changes, rewards) in zip(acked, left, strict=True) if changes or rewards}
