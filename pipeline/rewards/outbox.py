"""The grant outbox: every record the engine writes waits here until the runtime
has published it to `reward.grants`, so grants made by the CLI, by sweeps, or by
a call that crashed before publishing still get there. Publication is exactly
once (agents/outputs.py); `record_id` lets a consumer check."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from tierflow.pipeline.rewards.ledger import Ledger
from tierflow.schemas.reward_grants import RewardRecord, decode


@dataclass(frozen=True, slots=True)
class OutboxBatch:
    records: list[RewardRecord]
    raw: dict[str, list[str]]  # user -> records exactly as stored, for ack

    @classmethod
    def of(cls, raw: dict[str, list[str]]) -> OutboxBatch:
        return cls([decode(r) for records in raw.values() for r in records], raw)


def pending(ledger: Ledger, max_records: int) -> OutboxBatch:
    """Undelivered records, oldest first per user, up to about max_records."""
    return OutboxBatch.of(ledger.outbox(max_records))


def waiting(ledger: Ledger, users: Collection[str]) -> OutboxBatch:
    """Every undelivered record of these users, oldest first per user."""
    return OutboxBatch.of(ledger.outbox_of(users))


def ack(ledger: Ledger, batch: OutboxBatch) -> None:
    """After the batch's records are durably published."""
    ledger.ack(batch.raw)
