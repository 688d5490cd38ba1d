"""Consumption, behaviour and "need" tags (docs/domain.md, "Tags"), named the way
the field names them:

- `F<n>`: repurchased n times (F3 = third repurchase);
- `<sku><n>`: bought that SKU in n orders (TP2);
- `fav_category:<category>`: one category holds a large share of the spend;
- `channel:<channel>`: where the user buys (or, before a purchase, shows up);
- `weekend_buyer` / `weekday_buyer`;
- `prefers_coupons` / `prefers_gifts`: which kind of perk the user goes for.

Ties are broken by name so the same state always gives the same tags.
"""

from __future__ import annotations

from collections.abc import Mapping

from tierflow.pipeline.state.summary import Summary
from tierflow.pipeline.tiering.config import TagsConfig


def repurchase_tag(purchases: int) -> str | None:
    return f"F{purchases - 1}" if purchases >= 2 else None


def sku_tags(skus: Mapping[str, Mapping[str, int]], limit: int) -> list[str]:
    # The most ordered first, ties by name: (-orders, sku) sorts both ways at once.
    ordered = sorted((-orders, sku) for sku, v in skus.items() if (orders := v.get("orders", 0)) > 0)
    return [f"{sku}{-negative}" for negative, sku in ordered[:limit]]


def favourite_category(
    categories: Mapping[str, Mapping[str, float]], min_share: float
) -> str | None:
    spend = {cat: round(v.get("amount", 0) * 100) for cat, v in categories.items()}
    total = sum(spend.values())
    if total <= 0:
        return None
    cat, cents = min(spend.items(), key=lambda kv: (-kv[1], kv[0]))
    return cat if cents >= min_share * total else None


def preferred_channel(
    purchase_channels: Mapping[str, int], channels: Mapping[str, int]
) -> str | None:
    source = purchase_channels or channels
    if not source:
        return None
    return min(source.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def time_tag(counts: Mapping[str, int], weekend_min_share: float) -> str | None:
    weekend = counts.get("purchase_weekend", 0)
    total = weekend + counts.get("purchase_weekday", 0)
    if total == 0:
        return None
    return "weekend_buyer" if weekend >= weekend_min_share * total else "weekday_buyer"


def perk_tag(counts: Mapping[str, int], config: TagsConfig) -> str | None:
    coupons = sum(counts.get(f"interaction:{k}", 0) for k in config.coupon_kinds)
    gifts = sum(counts.get(f"interaction:{k}", 0) for k in config.gift_kinds)
    if coupons > gifts:
        return "prefers_coupons"
    if gifts > coupons:
        return "prefers_gifts"
    return None


def tags(summary: Summary, config: TagsConfig) -> list[str]:
    out: list[str] = []
    repurchase = repurchase_tag(summary.frequency.get("lifetime", 0))
    if repurchase:
        out.append(repurchase)
    out += sku_tags(summary.skus, config.max_sku_tags)
    favourite = favourite_category(summary.categories, config.favourite_category_min_share)
    if favourite is not None:
        out.append(f"fav_category:{favourite}")
    channel = preferred_channel(summary.purchase_channels, summary.channels)
    if channel is not None:
        out.append(f"channel:{channel}")
    for tag in (
        time_tag(summary.counts, config.weekend_min_share),
        perk_tag(summary.counts, config),
    ):
        if tag is not None:
            out.append(tag)
    return out
