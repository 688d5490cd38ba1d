"""What users and operators read: a user's wallet, and the programme report
(budgets, inventory, pools, grants, points liability, envelopes). Read-only."""

from __future__ import annotations

from tierflow.pipeline.rewards.catalogue import UniversalCode
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.ledger import Ledger
from tierflow.pipeline.rewards.report import ReportBuilder, stocked_prizes
from tierflow.pipeline.rewards.wallet import wallet_view


def wallet(ledger: Ledger, config: RewardsConfig, user_id: str, now_ms: int) -> dict[str, object]:
    return wallet_view(user_id, ledger.read(user_id), now_ms, config.withdraw_min_cents)


def report(ledger: Ledger, config: RewardsConfig, now_ms: int) -> dict[str, object]:
    """Reads every rewarded user's wallet: O(users), meant for operators, not the hot path."""
    builder = ReportBuilder(config, now_ms)
    for user in ledger.users():
        builder.add_user(ledger.read(user), ledger.grants(user))
    campaigns = {}
    for cid in config.campaigns:
        pools = [p for p in stocked_prizes(config, cid) if isinstance(config.prizes[p], UniversalCode)]
        campaigns[cid] = ledger.campaign(cid, pools)
    return builder.build(campaigns)
