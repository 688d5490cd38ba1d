"""Does a coupon apply to an order, and how much does it take off? Pure.

Scope decides which order lines count; the threshold is measured on those
lines only ("20 off 100" on a category means 100 spent in that category);
validity is checked at the order's event time.
"""

from __future__ import annotations

from dataclasses import dataclass

from tierflow.pipeline.state.summary import cents
from tierflow.schemas.events import Purchase
from tierflow.schemas.reward_grants import CouponTerms, RewardItem

COUPON_TYPES = ("coupon", "free_shipping", "referral_coupon")


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku: str
    category: str
    brand: str | None
    amount_cents: int  # qty x unit price


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    shop: str
    at_ms: int
    lines: tuple[OrderLine, ...]
    # Shipping charged, when the order states it; free-shipping coupons cover up to their face value.
    shipping_cents: int | None = None

    @classmethod
    def from_purchase(cls, purchase: Purchase, ts_ms: int, shop: str) -> Order:
        lines = tuple(OrderLine(i.sku, i.category, i.brand, cents(i.qty * i.price)) for i in purchase.items)
        return cls(purchase.order_id, shop, ts_ms, lines)


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    discount_cents: int = 0
    reason: str | None = None  # why not, when not ok

    @classmethod
    def no(cls, reason: str) -> Verdict:
        return cls(False, 0, reason)


def in_scope(terms: CouponTerms, line: OrderLine) -> bool:
    if terms.scope == "all":
        return True
    value = {"sku": line.sku, "category": line.category, "brand": line.brand}[terms.scope]
    return value in terms.scope_values


def eligible_cents(terms: CouponTerms, order: Order) -> int:
    return sum(line.amount_cents for line in order.lines if in_scope(terms, line))


def apply(terms: CouponTerms, order: Order) -> Verdict:
    """The discount these terms give on this order, or why they do not apply."""
    if order.at_ms < terms.valid_from_ms:
        return Verdict.no("not_yet_valid")
    if order.at_ms >= terms.valid_until_ms:
        return Verdict.no("expired")
    if terms.issuer == "merchant" and terms.merchant != order.shop:
        return Verdict.no("wrong_merchant")
    eligible = eligible_cents(terms, order)
    if eligible == 0:
        return Verdict.no("out_of_scope")
    if eligible < terms.threshold_cents:
        return Verdict.no("below_threshold")
    if terms.discount == "shipping":
        covered = terms.off_cents if order.shipping_cents is None else min(terms.off_cents, order.shipping_cents)
        return Verdict(True, covered)
    if terms.discount == "percent":
        return Verdict(True, min(eligible * terms.percent_off // 100, terms.off_cents))
    return Verdict(True, min(terms.off_cents, eligible))


def check(item: RewardItem | None, status: str | None, order: Order) -> Verdict:
    """May the holder redeem this wallet item on this order? `status` is the
    item's lifecycle status in the wallet ("active" until redeemed or cancelled)."""
    if item is None:
        return Verdict.no("unknown_coupon")
    if item.type not in COUPON_TYPES or item.terms is None:
        return Verdict.no("not_a_coupon")
    if status != "active":
        return Verdict.no(f"coupon_{status}")
    return apply(item.terms, order)
