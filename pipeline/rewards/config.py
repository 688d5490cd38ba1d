"""The `[rewards]` section: prize catalogue, campaigns and rules.

Defaults (a documented sample campaign set) live in pipeline/config/defaults/rewards.toml.
Everything is checked when the configuration loads; every error names the prize,
campaign or rule at fault, and all of them are reported at once.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import datetime
from typing import Literal

import msgspec

from tierflow.pipeline.rewards import catalogue, holdout
from tierflow.pipeline.rewards.catalogue import Prize, ReferralCoupon
from tierflow.pipeline.tiering.rfm import SEGMENT_IDS
from tierflow.schemas.events import InteractionKind
from tierflow.schemas.tier_changes import Dimension

EventType = Literal["purchase", "cart", "browse", "interaction"]
# Ids end up in Redis keys and idempotency keys: keep them plain.
_ID = re.compile(r"^[a-z0-9_]{1,64}$")


class Campaign(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str = ""
    # Disabled campaigns and their rules are ignored entirely.
    enabled: bool = True
    # Money the campaign may commit, in cents; None = unlimited.
    budget_cents: int | None = None
    # Active window [start, end) on the trigger's time; None = open-ended.
    start: datetime | None = None
    end: datetime | None = None
    # Percent of customers (by a hash of user and campaign id) kept as a control
    # group that receives nothing, to measure the campaign's uplift; 0 = none.
    holdout_percent: float = 0.0


class TierTrigger(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag="tier",
                  tag_field="on", rename={"from_": "from"}):
    """The user entered a tier in one dimension (a `tier.changes` record)."""

    dimension: Dimension
    entered: str
    # Only when coming from one of these tiers (empty = from anywhere, first assignment included).
    from_: list[str] = []


class EventTrigger(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag="event",
                   tag_field="on"):
    """An input event matching every condition given."""

    event: EventType
    kind: InteractionKind | None = None  # interaction kind
    targets: list[str] = []  # interaction target (campaign id, ...), any of
    first_purchase: bool = False  # the user's earliest purchase
    min_amount_cents: int = 0  # purchase amount at least
    categories: list[str] = []  # purchase has an item in one of these
    channels: list[str] = []  # event channel, any of


class CodeTrigger(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag="code",
                  tag_field="on"):
    """The user entered a public code (`tierflow code claim CODE`)."""

    code: str


Trigger = TierTrigger | EventTrigger | CodeTrigger


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    campaign: str
    trigger: Trigger
    prize: str
    # Grants of this rule one user may receive (for different triggers); a
    # referral coupon is one grant that steps up, so its rules keep 1.
    per_user: int = 1


class RewardsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # The shop purchases on the input topics are made at: merchant coupons
    # apply only at their own shop, platform coupons everywhere.
    shop: str
    # Money value of one point, for budgets and the points liability.
    point_value_cents: int
    # Smallest cash-envelope withdrawal.
    withdraw_min_cents: int
    prizes: dict[str, Prize] = {}
    campaigns: dict[str, Campaign] = {}
    rules: dict[str, Rule] = {}

    def __post_init__(self) -> None:
        errors = validate(self)
        if errors:
            raise ValueError("; ".join(errors))

    def active_rules(self) -> dict[str, Rule]:
        return {rid: r for rid, r in self.rules.items() if self.campaigns[r.campaign].enabled}


def _check_trigger(rule: Rule, config: RewardsConfig) -> list[str]:
    trigger, prize = rule.trigger, config.prizes.get(rule.prize)
    errors: list[str] = []
    if isinstance(trigger, TierTrigger):
        # Other dimensions name their tiers in the segmentation config.
        if trigger.dimension == "segment":
            errors += [f"unknown segment {s!r} (one of {', '.join(SEGMENT_IDS)})"
                       for s in (trigger.entered, *trigger.from_) if s not in SEGMENT_IDS]
        if trigger.entered in trigger.from_:
            errors.append(f"from lists the tier it enters ({trigger.entered!r})")
    elif isinstance(trigger, EventTrigger):
        if trigger.kind is not None and trigger.event != "interaction":
            errors.append("kind only applies to interaction events")
        if trigger.targets and trigger.event != "interaction":
            errors.append("targets only apply to interaction events")
        purchase_only = trigger.first_purchase or trigger.min_amount_cents or trigger.categories
        if purchase_only and trigger.event != "purchase":
            errors.append("first_purchase, min_amount_cents and categories only apply to purchases")
        if trigger.min_amount_cents < 0:
            errors.append("min_amount_cents must not be negative")
    if isinstance(prize, ReferralCoupon):
        is_referral = isinstance(trigger, EventTrigger) and trigger.kind == "referral_accept"
        if not is_referral:
            errors.append("a referral coupon steps up with accepted invites: trigger it on "
                          "event = \"interaction\", kind = \"referral_accept\"")
        if rule.per_user != 1:
            errors.append("a referral coupon is one grant that steps up: per_user must be 1")
    if rule.per_user < 1:
        errors.append("per_user must be at least 1")
    return errors


def validate(config: RewardsConfig) -> list[str]:
    """Every inconsistency in the section, each naming what is wrong."""
    errors: list[str] = []
    for kind, ids in (("prize", config.prizes), ("campaign", config.campaigns), ("rule", config.rules)):
        errors += [f"{kind} id {i!r} must match {_ID.pattern}" for i in ids if not _ID.match(i)]
    if config.point_value_cents < 0:
        errors.append("point_value_cents must not be negative")
    if config.withdraw_min_cents < 0:
        errors.append("withdraw_min_cents must not be negative")
    catalogue_errors = catalogue.check_catalogue(config.prizes)
    errors += catalogue_errors
    for cid, campaign in config.campaigns.items():
        if campaign.budget_cents is not None and campaign.budget_cents < 0:
            errors.append(f"campaign {cid!r}: budget_cents must not be negative")
        if campaign.start and campaign.end and catalogue.ms(campaign.start) >= catalogue.ms(campaign.end):
            errors.append(f"campaign {cid!r}: start must be before end")
        if not 0 <= campaign.holdout_percent < holdout.PERCENT:
            errors.append(f"campaign {cid!r}: holdout_percent must be at least 0 and below 100")

    codes: dict[str, list[str]] = defaultdict(list)
    stock_users: dict[str, set[str]] = defaultdict(set)
    for rid, rule in config.rules.items():
        found: list[str] = []
        if rule.campaign not in config.campaigns:
            found.append(f"unknown campaign {rule.campaign!r}")
        if rule.prize not in config.prizes:
            found.append(f"unknown prize {rule.prize!r}")
        found += _check_trigger(rule, config)
        errors += [f"rule {rid!r}: {message}" for message in found]
        if isinstance(rule.trigger, CodeTrigger):
            codes[rule.trigger.code].append(rid)
        # Expanding packs needs a sound catalogue (no cycles, no unknown members).
        if rule.prize in config.prizes and not catalogue_errors:
            for component in catalogue.flatten(rule.prize, config.prizes):
                if catalogue.stocked(component.prize):
                    stock_users[component.prize_id].add(rule.campaign)
    errors += [f"code {code!r} is claimed through several rules ({', '.join(rids)}); keep one"
               for code, rids in codes.items() if len(rids) > 1]
    # Inventory and code pools live under their campaign's hash tag, so a gift
    # pack's checks run in one Redis script: a stocked prize belongs to one campaign.
    errors += [f"prize {pid!r} has finite stock and is granted by several campaigns "
               f"({', '.join(sorted(cids))}); give each campaign its own prize"
               for pid, cids in stock_users.items() if len(cids) > 1]
    return errors
