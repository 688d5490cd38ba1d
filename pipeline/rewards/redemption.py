"""Redeeming coupons named on a purchase: each coupon is redeemed if it applies
to the order and is still active, or rejected with the reason; either way once
per (purchase, coupon), so a replayed purchase changes nothing. Whether a
coupon applies is redeem.py's pure decision, what to write is `plan`'s, the
write is redeem.lua's (granting.py runs them for a batch of purchases). A
coupon redeemed on an order refunded in full is given back while still valid
(`give_back`).
"""

from __future__ import annotations

import msgspec

from tierflow.pipeline.rewards import redeem
from tierflow.pipeline.rewards.ledger import Ledger, RedeemOp, Update, dedupe_key
from tierflow.pipeline.rewards.ledger import RewardKeys as K
from tierflow.pipeline.rewards.wallet import RawWallet
from tierflow.schemas.events import Purchase
from tierflow.schemas.reward_grants import RewardRecord, encode


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


def give_back(user_id: str, order_id: str, raw: RawWallet, now_ms: int) -> list[tuple[str, Update, RewardRecord]]:
    """The coupons redeemed on an order that was refunded in full, made active again while
    still valid: (dedupe key, write, `redemption_returned` record) each, once per
    redemption. A coupon past its validity stays redeemed. Pure."""
    returned = []
    for coupon_id, stored in raw.redemptions.items():
        detail = msgspec.json.decode(stored)
        item = raw.item(coupon_id)
        if (detail.get("order_id") != order_id or raw.status.get(coupon_id) != "redeemed" or item is None
                or item.terms is None or item.terms.valid_until_ms <= now_ms):
            continue
        event_id = detail.get("event_id")
        record = RewardRecord(
            record_id=f"redemption_returned:{event_id}:{coupon_id}", kind="redemption_returned", user_id=user_id,
            at_ms=now_ms, recorded_ms=now_ms, items=[item], order_id=order_id, campaign=item.campaign,
            rule=item.rule, prize=item.prize, trigger=f"event:{event_id}", reason="refund")
        update = Update(checks=[[K.STATUS, coupon_id, "redeemed"]], hset=[[K.STATUS, coupon_id, "active"]],
                        push=[[K.OUTBOX, encode(record).decode()]])
        returned.append((dedupe_key("give_back", event_id, coupon_id), update, record))
    return returned


def give_back_all(ledger: Ledger, user_id: str, order_id: str, now_ms: int) -> list[RewardRecord]:
    """Give back the coupons redeemed on an order refunded in full (`give_back`), each with
    compare-and-set, once whatever is replayed."""
    records: list[RewardRecord] = []
    for dedupe, _, first in give_back(user_id, order_id, ledger.read(user_id), now_ms):
        coupon_id = first.items[0].item_id
        decided: list[RewardRecord] = []

        def decide(raw: RawWallet, coupon_id: str = coupon_id, decided: list[RewardRecord] = decided) -> Update:
            found = [(update, record) for _, update, record in give_back(user_id, order_id, raw, now_ms)
                     if record.items[0].item_id == coupon_id]
            decided[:] = [found[0][1]] if found else []
            return found[0][0] if found else Update()

        if ledger.commit(user_id, dedupe, decide):
            records += decided
    return records
