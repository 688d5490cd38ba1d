"""What a user asks of their account: withdrawing matured cash-envelope money,
and giving the shipping address physical prizes wait for. Decided on the wallet
as read and committed with compare-and-set, each with its reward.grants records."""

from __future__ import annotations

import msgspec

from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.ledger import Ledger, Update, dedupe_key
from tierflow.pipeline.rewards.ledger import RewardKeys as K
from tierflow.pipeline.rewards.wallet import RawWallet, RewardError, balances, items_of
from tierflow.schemas.reward_grants import RewardRecord, encode


def withdraw(ledger: Ledger, config: RewardsConfig, user_id: str, amount_cents: int, ref: str,
             now_ms: int) -> RewardRecord | None:
    """Cash out available envelope money (to the user's bound card, downstream of
    `reward.grants`). At least rewards.withdraw_min_cents; once per `ref`."""
    minimum = max(config.withdraw_min_cents, 1)
    if amount_cents < minimum:
        raise RewardError(f"the smallest withdrawal is {minimum / 100:.2f}")
    record = RewardRecord(record_id=f"withdrawal:{ref}", kind="withdrawal", user_id=user_id, at_ms=now_ms,
                          recorded_ms=now_ms, items=[], amount_cents=amount_cents, reason=ref)

    def decide(raw: RawWallet) -> Update:
        available = balances(raw, items_of(raw), now_ms).available_cents
        if amount_cents > available:
            raise RewardError(f"only {available / 100:.2f} is available (pending envelopes mature later)")
        withdrawn = raw.account.get("withdrawn")
        return Update(checks=[[K.ACCOUNT, "withdrawn", withdrawn]],
                      hset=[[K.ACCOUNT, "withdrawn", str(int(withdrawn or 0) + amount_cents)]],
                      push=[[K.OUTBOX, encode(record).decode()]])

    return record if ledger.commit(user_id, dedupe_key("withdraw", ref), decide) else None


def set_address(ledger: Ledger, user_id: str, address: str, now_ms: int) -> list[RewardRecord]:
    """Store the shipping address; physical prizes waiting for one become ready to ship."""
    if not address.strip():
        raise RewardError("the address is empty")
    written: list[RewardRecord] = []

    def decide(raw: RawWallet) -> Update:
        waiting = [i for i in items_of(raw)
                   if i.type == "physical" and raw.status.get(i.item_id) == "awaiting_address"]
        written[:] = [RewardRecord(
            record_id=f"fulfilment:{i.item_id}:ready", kind="fulfilment", user_id=user_id, at_ms=now_ms,
            recorded_ms=now_ms, campaign=i.campaign, rule=i.rule, prize=i.prize, prize_type="physical",
            items=[msgspec.structs.replace(i, fulfilment=msgspec.structs.replace(
                i.fulfilment, status="ready", address=address))],  # type: ignore[type-var]
            reason="address_set") for i in waiting]
        return Update(checks=[[K.STATUS, i.item_id, "awaiting_address"] for i in waiting],
                      hset=[[K.ACCOUNT, "address", address], *([K.STATUS, i.item_id, "ready"] for i in waiting)],
                      push=[[K.OUTBOX, encode(r).decode()] for r in written])

    # CAS on the waiting items' status keeps a repeated call from readying them twice.
    return written if ledger.commit(user_id, dedupe_key("address", address, now_ms), decide) else []
