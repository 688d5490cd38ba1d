"""Granting prizes: a trigger (a tier entered, an input event) fires rules, each
rule gives a grant intent, the intent reserves budget, stock and pool coupons on
its campaign, the catalogue issues the items, and the user's wallet is written
(the reservation is released if the wallet refuses). Referral coupons step up
instead: each new step cancels the unused coupon held and issues a bigger one.

Every grant is idempotent on (rule, user, trigger), so replaying a trigger
grants nothing twice (ledger.py explains why this holds on Redis Cluster).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import orjson

from tierflow.pipeline.rewards import catalogue, rules
from tierflow.pipeline.rewards.catalogue import IssueContext, ReferralCoupon, UniversalCode
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.ledger import Ledger, PoolNeed
from tierflow.pipeline.rewards.rules import GrantIntent
from tierflow.schemas.events import Event, Interaction
from tierflow.schemas.reward_grants import RewardItem, RewardRecord
from tierflow.schemas.tier_changes import TierChange

GrantStatus = Literal["granted", "duplicate", "budget", "stock", "pool", "limit", "conflict"]


@dataclass(frozen=True, slots=True)
class Outcome:
    status: GrantStatus
    records: list[RewardRecord]  # new records when granted; the stored ones when a duplicate
    prize_id: str | None = None  # out of stock / pool empty


def grant_on_tier_change(ledger: Ledger, config: RewardsConfig, change: TierChange,
                         now_ms: int) -> list[RewardRecord]:
    return [r for intent in rules.match_tier_change(config, change) for r in grant_new(ledger, config, intent, now_ms)]


def grant_on_event(ledger: Ledger, config: RewardsConfig, event: Event, ts_ms: int,
                   now_ms: int) -> list[RewardRecord]:
    """A valid input event, after the state store applied it (first-purchase
    rules read the user's first purchase time from there)."""
    first = ledger.first_purchase_ms(event.user_id) if rules.wants_first_purchase(config, event) else None
    written: list[RewardRecord] = []
    for intent in rules.match_event(config, event, ts_ms, first):
        if isinstance(config.prizes[intent.prize_id], ReferralCoupon):
            assert isinstance(event, Interaction)  # checked at load
            written += step_up(ledger, config, intent, event, now_ms)
        else:
            written += grant_new(ledger, config, intent, now_ms)
    return written


def grant_new(ledger: Ledger, config: RewardsConfig, intent: GrantIntent, now_ms: int) -> list[RewardRecord]:
    """The records of the grant if it is made now; nothing when refused or made before."""
    outcome = grant(ledger, config, intent, now_ms)
    return outcome.records if outcome.status == "granted" else []


def grant(ledger: Ledger, config: RewardsConfig, intent: GrantIntent, now_ms: int) -> Outcome:
    key, user = intent.idempotency_key, intent.user_id
    stored = ledger.stored_grant(user, key)
    if stored is not None:
        ledger.touch(user)  # a replay: make sure its records get delivered
        return Outcome("duplicate", stored)
    needs = catalogue.needs(intent.prize_id, config.prizes, config.point_value_cents)
    stock, pools = _campaign_needs(config, needs)
    reservation = ledger.reserve(intent.campaign_id, key, needs.cost_cents,
                                 config.campaigns[intent.campaign_id].budget_cents, stock, pools)
    if not reservation.reserved:
        return Outcome(reservation.status, [], reservation.prize_id)  # type: ignore[arg-type]
    components = catalogue.flatten(intent.prize_id, config.prizes)
    expiry = _points_expiry(intent.at_ms, components)
    address = None
    if any(isinstance(c.prize, catalogue.Physical) for c in components):
        address = ledger.read(user).account.get("address")
    items = catalogue.issue(intent.prize_id, config.prizes, issue_context(config, intent, address),
                            reservation.codes)
    record = grant_record(config, intent, items, reservation.cost_cents, now_ms)
    status, stored = ledger.commit_grant(user, key, intent.rule_id, config.rules[intent.rule_id].per_user,
                                         [record], items, expiry_ms=expiry)
    if status == "granted":
        return Outcome("granted", [record])
    if status == "duplicate":
        assert stored is not None
        return Outcome("duplicate", stored)
    ledger.release(intent.campaign_id, key, [p.prize_id for p in pools])
    return Outcome(status, [])  # type: ignore[arg-type]


def step_up(ledger: Ledger, config: RewardsConfig, intent: GrantIntent, event: Interaction,
            now_ms: int) -> list[RewardRecord]:
    """Referral coupon: count the invite; on reaching a new step, cancel the
    coupon held (if still unused) and issue the next one. Never mutates a coupon."""
    prize = config.prizes[intent.prize_id]
    assert isinstance(prize, ReferralCoupon)
    user, rule_id = intent.user_id, intent.rule_id
    # Each accepted-invite event counts once, however often it is replayed.
    invites = ledger.add_invite(user, rule_id, event.event_id)
    reached = catalogue.reached_step(prize, invites)
    state_text, statuses = ledger.referral(user, rule_id)
    held = orjson.loads(state_text) if state_text else None
    held_step = held["step"] if held else 0
    if reached <= held_step:
        return []
    if held is not None and statuses.get(held["item"]) != "active":
        return []  # the coupon grows only while unused
    step = replace(intent, trigger_id=f"step:{reached}")
    key = step.idempotency_key
    reservation = ledger.reserve(intent.campaign_id, key, catalogue.step_cost(prize, held_step, reached),
                                 config.campaigns[intent.campaign_id].budget_cents, [], [])
    if not reservation.reserved:
        return []
    item = catalogue.referral_item(intent.prize_id, prize, reached, issue_context(config, step))
    records = [grant_record(config, step, [item], reservation.cost_cents, now_ms)]
    if held is not None:
        old = ledger.read(user).item(held["item"])
        assert old is not None  # the referral state names an issued coupon
        records.insert(0, RewardRecord(
            record_id=f"cancellation:{old.item_id}", kind="cancellation", user_id=user, at_ms=intent.at_ms,
            recorded_ms=now_ms, items=[old], campaign=old.campaign, rule=old.rule, prize=old.prize,
            prize_type="referral_coupon", trigger=step.trigger_id, idempotency_key=key,
            reason="referral_step_up", replaced_by=item.item_id,
        ))
    referral = {"expect": state_text, "cancel": held["item"] if held else "",
                "state": orjson.dumps({"item": item.item_id, "step": reached}).decode()}
    status, _ = ledger.commit_grant(user, key, rule_id, 0 if held else 1, records, [item], referral)
    if status == "granted":
        return records
    if status != "duplicate":
        ledger.release(intent.campaign_id, key, [])
    return []


def issue_context(config: RewardsConfig, intent: GrantIntent, address: str | None = None) -> IssueContext:
    return IssueContext(intent.campaign_id, intent.rule_id, intent.idempotency_key, intent.at_ms,
                        config.shop, config.point_value_cents, address)


def grant_record(config: RewardsConfig, intent: GrantIntent, items: list[RewardItem], cost_cents: int,
                 now_ms: int) -> RewardRecord:
    prize = config.prizes[intent.prize_id]
    return RewardRecord(
        record_id=f"grant:{intent.idempotency_key}", kind="grant", user_id=intent.user_id,
        at_ms=intent.at_ms, recorded_ms=now_ms, items=items, cost_cents=cost_cents,
        campaign=intent.campaign_id, rule=intent.rule_id, prize=intent.prize_id,
        prize_type=catalogue.prize_type(prize), trigger=intent.trigger_id,  # type: ignore[arg-type]
        idempotency_key=intent.idempotency_key,
    )


def _campaign_needs(config: RewardsConfig,
                    needs: catalogue.Needs) -> tuple[list[tuple[str, int, int]], list[PoolNeed]]:
    """Stock (prize, units, limit) and pools to reserve, with their limits from the catalogue."""
    stock = [(pid, units, config.prizes[pid].stock) for pid, units in needs.stock.items()]  # type: ignore[union-attr]
    pools = []
    for pid, count in needs.pools.items():
        pool = config.prizes[pid]
        assert isinstance(pool, UniversalCode)
        pools.append(PoolNeed(pid, count, pool.code, pool.count))
    return stock, pools


def _points_expiry(at_ms: int, components: Sequence[catalogue.Component]) -> int | None:
    """The soonest expiry of the points a grant issues, for the expiry index."""
    return min((at_ms + c.prize.expires_days * catalogue.DAY_MS for c in components
                if isinstance(c.prize, catalogue.Points) and c.prize.expires_days is not None), default=None)
