"""Which rules fire: a trigger (a tier entered, an input event, a claimed code)
plus conditions, within the campaign's active window, gives grant intents.

Pure: no I/O. Limits that need shared state (per-user counts, budgets,
inventory, code pools) are enforced atomically by the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import orjson

from tierflow.pipeline.ingest.validate import parse_ts
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
from tierflow.schemas.events import Event, Interaction, Purchase

DIMENSIONS = ("segment", "lifecycle", "membership", "aipl")


@dataclass(frozen=True, slots=True)
class TierChange:
    """A `tier.changes` record, as far as rewards care."""

    user_id: str
    dimension: str
    old: str | None
    new: str | None
    version: int
    at_ms: int

    @classmethod
    def parse(cls, record: Mapping[str, object]) -> TierChange:
        """From the record value (extra fields such as reason and scores are ignored).
        `event_time` may be RFC 3339 or epoch milliseconds."""
        try:
            user_id, dimension, version = record["user_id"], record["dimension"], record["version"]
            event_time = record["event_time"]
        except KeyError as exc:
            raise ValueError(f"tier change without {exc.args[0]!r}") from None
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("tier change user_id must be a non-empty string")
        if dimension not in DIMENSIONS:
            raise ValueError(f"tier change dimension {dimension!r} is not one of {', '.join(DIMENSIONS)}")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError("tier change version must be an integer")
        if not isinstance(event_time, str | int) or isinstance(event_time, bool):
            raise ValueError("tier change event_time must be RFC 3339 or epoch milliseconds")
        old, new = record.get("old"), record.get("new")
        return cls(user_id, str(dimension), None if old is None else str(old),
                   None if new is None else str(new), version, parse_ts(event_time))

    @property
    def trigger_id(self) -> str:
        # (dimension, version) is unique per user: replays carry the same version.
        return f"tier:{self.dimension}:v{self.version}"


@dataclass(frozen=True, slots=True)
class GrantIntent:
    rule_id: str
    campaign_id: str
    prize_id: str
    user_id: str
    trigger_id: str
    at_ms: int

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


def _intents(config: RewardsConfig, rules: Mapping[str, Rule], user_id: str, trigger_id: str,
             at_ms: int) -> list[GrantIntent]:
    return [
        GrantIntent(rid, rule.campaign, rule.prize, user_id, trigger_id, at_ms)
        for rid, rule in rules.items()
        if campaign_active(config.campaigns[rule.campaign], at_ms)
    ]


def match_tier_change(config: RewardsConfig, change: TierChange) -> list[GrantIntent]:
    fired = {
        rid: rule for rid, rule in config.active_rules().items()
        if isinstance(rule.trigger, TierTrigger)
        and rule.trigger.dimension == change.dimension
        and change.new == rule.trigger.entered
        and (not rule.trigger.from_ or change.old in rule.trigger.from_)
    }
    return _intents(config, fired, change.user_id, change.trigger_id, change.at_ms)


def wants_first_purchase(config: RewardsConfig, event: Event) -> bool:
    """Does any rule need to know whether this purchase is the user's first?"""
    return isinstance(event, Purchase) and any(
        isinstance(r.trigger, EventTrigger) and r.trigger.event == "purchase" and r.trigger.first_purchase
        for r in config.active_rules().values()
    )


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


def match_event(config: RewardsConfig, event: Event, ts_ms: int,
                first_purchase_ms: int | None = None) -> list[GrantIntent]:
    fired = {
        rid: rule for rid, rule in config.active_rules().items()
        if isinstance(rule.trigger, EventTrigger)
        and event_matches(rule.trigger, event, ts_ms, first_purchase_ms)
    }
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
