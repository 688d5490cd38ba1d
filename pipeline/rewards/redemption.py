"""Redeeming coupons named on a purchase: each coupon is redeemed if it applies
to the order and is still active, or rejected with the reason; either way once
per (purchase, coupon), so a replayed purchase changes nothing. Whether a
coupon applies is redeem.py's pure decision, what to write is `plan`'s, the
write is redeem.lua's (granting.py runs them for a batch of purchases).
"""

from __future__ import annotations

import msgspec

from tierflow.pipeline.rewards import redeem
from tierflow.pipeline.rewards.ledger import RedeemOp, dedupe_key
from tierflow.pipeline.rewards.wallet import RawWallet
from tierflow.schemas.events import Purchase
from tierflow.schemas.reward_grants import RewardRecord


def dedupe(purchase: Purchase, coupon_id: str) -> str:
    """A coupon named on a purchase is redeemed or rejected once, however often the purchase comes."""
    return dedupe_key("redeem", purchase.event_id, coupon_id)


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
    key = dedupe(purchase, coupon_id)
    if not verdict.ok or item is None:
        return RedeemOp(key, rejected)
    detail = {"order_id": purchase.order_id, "event_id": purchase.event_id, "at_ms": order.at_ms,
              "discount_cents": verdict.discount_cents, "order_cents": order_cents,
              "campaign": item.campaign, "rule": item.rule}
    return RedeemOp(key, msgspec.structs.replace(base, discount_cents=verdict.discount_cents),
                    coupon_id, detail, rejected)
