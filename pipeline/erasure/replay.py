"""Reading the topics again (`tierflow rebuild`) with erased customers left out: what a
customer left below their erasure's marks is skipped, except what the campaigns spent on
them, which stays counted, anonymously (as `tierflow forget` leaves it in Redis)."""

from __future__ import annotations

import hashlib

import msgspec

from tierflow.pipeline.rewards.restore import LedgerFold
from tierflow.schemas.reward_grants import RewardRecord

# Stands for every erased customer in the fold; never a user id (ids have no NUL).
_ANONYMOUS = "\x00erased"
_KEY_PREFIX = "erased:"


class ErasedSpend:
    """Folds erased customers' reward records into the campaigns' totals only."""

    def __init__(self, fold: LedgerFold) -> None:
        self.fold = fold
        self.records = 0

    def add(self, record: RewardRecord) -> None:
        # A key that names nobody; the same record again gets the same key (folded once).
        key = _KEY_PREFIX + hashlib.blake2b(record.record_id.encode(), digest_size=16).hexdigest()
        self.fold.add(msgspec.structs.replace(record, user_id=_ANONYMOUS, record_id=key, idempotency_key=key))
        self.records += 1

    def finish(self) -> None:
        """Drop the stand-in's wallet and its reservations: only the totals remain."""
        self.fold.users.pop(_ANONYMOUS, None)
        for campaign in self.fold.campaigns.values():
            for key in [k for k in campaign.reservations if k.startswith(_KEY_PREFIX)]:
                del campaign.reservations[key]
