"""Price discrimination with coupons (DOMAIN.md section 7): what a list price
plus targeted coupons earns, given what each shopper is willing to pay. Pure.

A shopper buys one unit when the best coupon in their wallet brings the price
down to what they are willing to pay. The coupons go through the same
redemption logic as real orders (`redeem.check`), so scope, threshold,
validity and merchant all count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tierflow.pipeline.rewards import redeem
from tierflow.schemas.reward_grants import RewardItem


@dataclass(frozen=True, slots=True)
class Shopper:
    user_id: str
    willingness_cents: int


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    category: str
    brand: str | None
    price_cents: int
    unit_cost_cents: int


@dataclass(frozen=True, slots=True)
class Outcome:
    buyers: int
    revenue_cents: int
    discount_cents: int
    profit_cents: int


def best_discount(wallet: Sequence[RewardItem], order: redeem.Order) -> int:
    verdicts = [redeem.check(item, "active", order) for item in wallet]
    return max((v.discount_cents for v in verdicts if v.ok), default=0)


def simulate(shoppers: Sequence[Shopper], product: Product, wallets: Mapping[str, Sequence[RewardItem]],
             shop: str, at_ms: int) -> Outcome:
    buyers = revenue = discounts = profit = 0
    line = redeem.OrderLine(product.sku, product.category, product.brand, product.price_cents)
    for shopper in shoppers:
        order = redeem.Order(f"sim-{shopper.user_id}", shop, at_ms, (line,))
        discount = best_discount(wallets.get(shopper.user_id, ()), order)
        paid = product.price_cents - discount
        if paid <= shopper.willingness_cents:
            buyers += 1
            revenue += paid
            discounts += discount
            profit += paid - product.unit_cost_cents
    return Outcome(buyers, revenue, discounts, profit)
