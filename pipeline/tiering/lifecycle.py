"""Lifecycle (business milestones; docs/domain.md, "Lifecycle"):
new -> first_purchase -> repeat (n repurchases) -> vip."""

from __future__ import annotations

import msgspec

from tierflow.pipeline.tiering.config import LifecycleConfig

STAGES = ("new", "first_purchase", "repeat", "vip")


class Lifecycle(msgspec.Struct, frozen=True):
    stage: str
    # Purchases after the first (F3 = third repurchase); 0 before a repeat purchase.
    repurchases: int
    # Lifetime spend behind the stage (explanations quote it); 0 in documents stored before it.
    spend_cents: int = 0


def lifecycle(
    purchases: int, lifetime_cents: int, membership_tier: str, config: LifecycleConfig
) -> Lifecycle:
    """From lifetime purchase count and spend; vip needs a purchase in any case."""
    repurchases = max(purchases - 1, 0)
    if purchases == 0:
        stage = "new"
    elif membership_tier in config.vip_tiers or (
        repurchases >= config.vip_min_repurchases and lifetime_cents >= config.vip_min_spend_cents
    ):
        stage = "vip"
    elif repurchases == 0:
        stage = "first_purchase"
    else:
        stage = "repeat"
    return Lifecycle(stage, repurchases, lifetime_cents)
