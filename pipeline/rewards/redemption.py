"""Redeeming coupons named on a purchase: each coupon is redeemed if it applies
to the order and is still active, or rejected with the reason; either way once
per (purchase, coupon), so a replayed purchase changes nothing. Whether a
coupon applies is redeem.py's pure decision; the write is redeem.lua's.
"""

from __future__ import annotations

import msgspec

from tierflow.pipeline.rewards import redeem
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.ledger import Ledger, RedeemOp, dedupe_key
from tierflow.pipeline.rewards.wallet import RawWallet
from tierflow.schemas.events import Purchase
from tierflow.schemas.reward_grants import RewardRecord


def redeem_coupons(ledger: Ledger, config: RewardsConfig, purchase: Purchase, ts_ms: int,
                   now_ms: int) -> list[RewardRecord]:
    """The redemption and rejection records newly written."""
    order = redeem.Order.from_purchase(purchase, ts_ms, config.shop)
    raw = ledger.read(purchase.user_id)
    ops = [plan(purchase, coupon_id, raw, order, now_ms) for coupon_id in dict.fromkeys(purchase.coupons)]
    return ledger.redeem(purchase.user_id, ops)


def plan(purchase: Purchase, coupon_id: str, raw: RawWallet, order: redeem.Order, now_ms: int) -> RedeemOp:
    """What to write for one coupon named on the purchase, decided on the wallet as read. Pure."""
    item = raw.item(coupon_id)
    verdict = redeem.check(item, raw.status.get(coupon_id), order)
    order_cents = sum(line.amount_cents for line in order.lines)
    base = RewardRecord(
        record_id=f"redemption:{purchase.event_id}:{coupon_id}", kind="redemption", user_id=purchase.user_id,
        at_ms=order.at_ms, recorded_ms=now_ms, items=[item] if item else [], order_id=purchase.order_id,
        order_cents=order_cents, campaign=item.campaign if item else None,
        rule=item.rule if item else None, prize=item.prize if item else None,
        trigger=f"event:{purchase.event_id}",
    )
    # An accepted coupon may be redeemed elsewhere before the write: then it is not active any more.
    rejected = msgspec.structs.replace(base, kind="redemption_rejected",
                                       reason=verdict.reason or "coupon_not_active")
    dedupe = dedupe_key("redeem", purchase.event_id, coupon_id)
    if not verdict.ok or item is None:
        return RedeemOp(dedupe, rejected)
    detail = {"order_id": purchase.order_id, "event_id": purchase.event_id, "at_ms": order.at_ms,
              "discount_cents": verdict.discount_cents, "order_cents": order_cents,
              "campaign": item.campaign, "rule": item.rule}
    return RedeemOp(dedupe, msgspec.structs.replace(base, discount_cents=verdict.discount_cents),
                    coupon_id, detail, rejected)
