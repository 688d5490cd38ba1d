"""Claiming a public code (NEW666): the user gets the grant behind it, once.
Each way a claim can fail has its own status, for the CLI's exit codes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tierflow.pipeline.rewards import granting, rules
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.granting import GrantStatus
from tierflow.pipeline.rewards.ledger import Ledger
from tierflow.schemas.reward_grants import RewardItem, RewardRecord

ClaimStatus = Literal[
    "granted", "already_claimed", "exhausted", "unknown_code", "inactive", "budget_exhausted",
    "out_of_stock", "limit", "held_out",
]
_CLAIM_STATUS: dict[GrantStatus, ClaimStatus] = {
    "granted": "granted", "duplicate": "already_claimed", "pool": "exhausted", "budget": "budget_exhausted",
    "stock": "out_of_stock", "limit": "limit", "conflict": "limit", "assigned": "held_out",
}


@dataclass(frozen=True, slots=True)
class ClaimResult:
    status: ClaimStatus
    record: RewardRecord | None = None  # the grant (the earlier one when already claimed)

    @property
    def coupon(self) -> RewardItem | None:
        if self.record is None:
            return None
        return next((i for i in self.record.items if i.terms is not None), None)


def claim_code(ledger: Ledger, config: RewardsConfig, code: str, user_id: str, now_ms: int) -> ClaimResult:
    match = rules.match_code(config, code, user_id, now_ms)
    if isinstance(match, str):
        return ClaimResult(match)
    # The claim's own outcome comes last: the customer's arm, when recorded, goes first.
    *_, outcome = granting.run(ledger, config, granting.intent_steps(config, match, granting.Grant(match)), now_ms)
    if match.held_out:
        return ClaimResult("held_out")
    return ClaimResult(_CLAIM_STATUS[outcome.status], outcome.records[-1] if outcome.records else None)
