"""Which rules fire: a trigger (a tier entered, an input event, a claimed code)
plus conditions, within the campaign's active window, gives grant intents. An
intent for a customer in the campaign's control group (holdout.py) is marked
held out: it is recorded as an assignment and grants nothing.

Pure: no I/O. Limits that need shared state (per-user counts, budgets,
inventory, code pools) are enforced atomically by the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import orjson

from tierflow.pipeline.ingest.validate import parse_ts
from tierflow.pipeline.rewards import holdout
from tierflow.pipeline.rewards.catalogue import ms
from tierflow.pipeline.rewards.config import (
    Campaign,
    CodeTrigger,
    EventTrigger,
    RewardsConfig,
    Rule,
    TierTrigger,
)
from tierflow.pipeline.state.summary import cents
from tierflow.schemas.events import EVENT_TYPES, Event, Interaction, Purchase
from tierflow.schemas.tier_changes import NOTICE_REASON, TierChange


@dataclass(frozen=True, slots=True)
class GrantIntent:
    rule_id: str
    campaign_id: str
    prize_id: str
    user_id: str
    trigger_id: str
    at_ms: int
    # The customer is in the campaign's control group: the intent is recorded, never granted.
    held_out: bool = False

    @property
    def idempotency_key(self) -> str:
        """(rule, user, trigger), unambiguous whatever characters the ids hold."""
        return orjson.dumps([self.rule_id, self.user_id, self.trigger_id]).decode()


def campaign_active(campaign: Campaign, at_ms: int) -> bool:
    if not campaign.enabled:
        return False
    if campaign.start is not None and at_ms < ms(campaign.start):
        return False
    return campaign.end is None or at_ms < ms(campaign.end)


def held_out(config: RewardsConfig, campaign_id: str, user_id: str) -> bool:
    """The customer is in the campaign's control group (never when it keeps none)."""
    percent = config.campaigns[campaign_id].holdout_percent
    return bool(percent) and holdout.arm(campaign_id, user_id, percent) == "control"


def _intents(config: RewardsConfig, rules: Mapping[str, Rule], user_id: str, trigger_id: str,
             at_ms: int) -> list[GrantIntent]:
    return [
        GrantIntent(rid, rule.campaign, rule.prize, user_id, trigger_id, at_ms,
                    held_out(config, rule.campaign, user_id))
        for rid, rule in rules.items()
        if campaign_active(config.campaigns[rule.campaign], at_ms)
    ]


def match_tier_change(config: RewardsConfig, change: TierChange) -> list[GrantIntent]:
    """Rules on the tier entered. Raises ValueError if `event_time` is not a real time."""
    if change.reason == NOTICE_REASON:  # a notice: nothing was entered
        return []
    fired = {
        rid: rule for rid, rule in config.active_rules().items()
        if isinstance(rule.trigger, TierTrigger)
        and rule.trigger.dimension == change.dimension
        and change.new == rule.trigger.entered
        and (not rule.trigger.from_ or change.old in rule.trigger.from_)
    }
    # (dimension, version) is unique per user: replays carry the same version.
    trigger_id = f"tier:{change.dimension}:v{change.version}"
    return _intents(config, fired, change.user_id, trigger_id, parse_ts(change.event_time))


@dataclass(frozen=True, slots=True)
class EventRules:
    """The active event-triggered rules by the event type they fire on, built once per
    config: an event no rule listens to (most browses and carts) costs one lookup."""

    by_type: Mapping[type, Mapping[str, Rule]]
    # Does any rule need to know whether a purchase is the user's first?
    wants_first_purchase: bool

    @classmethod
    def of(cls, config: RewardsConfig) -> EventRules:
        by_type: dict[type, dict[str, Rule]] = {}
        for rid, rule in config.active_rules().items():
            if isinstance(rule.trigger, EventTrigger):
                by_type.setdefault(EVENT_TYPES[rule.trigger.event], {})[rid] = rule
        wants = any(isinstance(r.trigger, EventTrigger) and r.trigger.first_purchase
                    for r in by_type.get(Purchase, {}).values())
        return cls(by_type, wants)


def event_matches(trigger: EventTrigger, event: Event, ts_ms: int, first_purchase_ms: int | None) -> bool:
    """`first_purchase_ms`: the user's earliest purchase time from the state store
    (the event has already been applied there), None when unknown."""
    if type(event).__struct_config__.tag != trigger.event:
        return False
    if trigger.channels and event.channel not in trigger.channels:
        return False
    if isinstance(event, Interaction):
        if trigger.kind is not None and event.kind != trigger.kind:
            return False
        return not trigger.targets or event.target in trigger.targets
    if isinstance(event, Purchase):
        if trigger.first_purchase and first_purchase_ms != ts_ms:
            return False
        if cents(event.amount) < trigger.min_amount_cents:
            return False
        return not trigger.categories or any(item.category in trigger.categories for item in event.items)
    return True


def match_event(config: RewardsConfig, event: Event, ts_ms: int, first_purchase_ms: int | None = None,
                event_rules: EventRules | None = None) -> list[GrantIntent]:
    listening = (event_rules or EventRules.of(config)).by_type.get(type(event))
    if not listening:
        return []
    fired = {rid: rule for rid, rule in listening.items()
             if event_matches(rule.trigger, event, ts_ms, first_purchase_ms)}  # type: ignore[arg-type]
    return _intents(config, fired, event.user_id, f"event:{event.event_id}", ts_ms)


def match_code(config: RewardsConfig, code: str, user_id: str,
               at_ms: int) -> GrantIntent | Literal["unknown_code", "inactive"]:
    """The grant a claimed code asks for. Codes are case-insensitive for users."""
    wanted = code.strip().upper()
    for rid, rule in config.active_rules().items():
        if isinstance(rule.trigger, CodeTrigger) and rule.trigger.code.upper() == wanted:
            found = _intents(config, {rid: rule}, user_id, f"code:{rule.trigger.code}", at_ms)
            return found[0] if found else "inactive"
    return "unknown_code"
