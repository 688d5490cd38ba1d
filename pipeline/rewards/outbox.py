"""The grant outbox: every record the engine writes waits here until the runtime
has published it to `reward.grants`, so grants made by the CLI, by sweeps, or by
a call that crashed before publishing still get there (at least once; consumers
drop duplicates by `record_id`)."""

from __future__ import annotations

from dataclasses import dataclass

from tierflow.pipeline.rewards.ledger import Ledger
from tierflow.schemas.reward_grants import RewardRecord, decode


@dataclass(frozen=True, slots=True)
class OutboxBatch:
    records: list[RewardRecord]
    raw: dict[str, list[str]]  # user -> records exactly as stored, for ack


def pending(ledger: Ledger, max_records: int) -> OutboxBatch:
    """Undelivered records, oldest first per user, up to about max_records."""
    raw = ledger.outbox(max_records)
    return OutboxBatch([decode(r) for records in raw.values() for r in records], raw)


def ack(ledger: Ledger, batch: OutboxBatch) -> None:
    """After the batch's records are durably published."""
    ledger.ack(batch.raw)
