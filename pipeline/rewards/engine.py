"""The reward engine: one object the runtime and the CLI hold, over the units
that do the work (granting, redemption, claims, points, account, views, outbox).

    engine = RewardEngine(redis_client, ctx.config.rewards)
    engine.on_tier_changes(changes, now_ms)            # `tier.changes` records, as published
    engine.on_events([(event, ts_ms), ...], now_ms)    # valid input events, after state apply
    engine.expire_points(now_ms, max_users)            # on a timer, a bounded slice per call
    batch = engine.outbox_of(users)                    # the publisher (agents/outputs.py):
    ... produce batch.records to `reward.grants` (key user_id, value reward_grants.encode(r)), commit ...
    engine.ack(batch)

Every call is idempotent: replaying a tier change or an event grants, redeems
and records nothing twice. Each call returns the records it newly wrote; the
same records wait in the outbox until acknowledged. A batch of triggers costs a
few Redis round trips whatever its size (granting.py), and writes exactly what
the same triggers one at a time would.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import msgspec

from tierflow.pipeline.lua import Redis
from tierflow.pipeline.rewards import account, claims, granting, outbox, points, views
from tierflow.pipeline.rewards.claims import ClaimResult
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.ledger import Ledger
from tierflow.pipeline.rewards.outbox import OutboxBatch
from tierflow.pipeline.rewards.rules import EventRules
from tierflow.schemas.events import Event, Purchase, Refund
from tierflow.schemas.reward_grants import RewardRecord
from tierflow.schemas.tier_changes import TierChange


class RewardEngine:
    def __init__(self, client: Redis, config: RewardsConfig) -> None:
        self.config = config
        self.ledger = Ledger(client)
        self.event_rules = EventRules.of(config)

    # --- triggers --------------------------------------------------------------

    def on_tier_change(self, change: Mapping[str, object] | TierChange, now_ms: int) -> list[RewardRecord]:
        """A `tier.changes` record value (decoded JSON) or a TierChange. Raises ValueError if malformed."""
        parsed = change if isinstance(change, TierChange) else msgspec.convert(change, TierChange)
        return self.on_tier_changes([parsed], now_ms)

    def on_tier_changes(self, changes: Sequence[TierChange], now_ms: int) -> list[RewardRecord]:
        """Raises ValueError, before granting anything, if a change is malformed."""
        return _new(granting.run(self.ledger, self.config, granting.change_steps(self.config, changes), now_ms))

    def on_event(self, event: Event, ts_ms: int, now_ms: int) -> list[RewardRecord]:
        return self.on_events([(event, ts_ms)], now_ms)

    def on_events(self, events: Sequence[tuple[Event, int]], now_ms: int) -> list[RewardRecord]:
        """Valid input events (event, event time), after the state store applied them: the
        coupons named on a purchase are redeemed, then the rules the event fires grant, then
        refunds take back the points their orders earned and give back the coupons redeemed on
        orders refunded in full (points.claw_back)."""
        buyers = list(dict.fromkeys(e.user_id for e, _ in events if type(e) is Purchase))
        first = self.ledger.first_purchases(buyers) if buyers and self.event_rules.wants_first_purchase else {}
        steps = granting.event_steps(self.config, self.event_rules, events, first)
        records = _new(granting.run(self.ledger, self.config, steps, now_ms)) if steps else []
        earned = points.earned_lots(self.config, self.event_rules, events, first)
        # Refunded orders, and orders with coupons (their refund may have come first).
        refunded = [(e.user_id, e.order_id) for e, _ in events
                    if type(e) is Refund or (type(e) is Purchase and e.coupons)]
        if earned or refunded:
            records += points.claw_back(self.ledger, earned, refunded, now_ms)
        return records

    def claim_code(self, code: str, user_id: str, now_ms: int) -> ClaimResult:
        """A user typed a public code."""
        return claims.claim_code(self.ledger, self.config, code, user_id, now_ms)

    # --- points and cash ---------------------------------------------------------

    def expire_points(self, now_ms: int, max_users: int) -> list[RewardRecord]:
        """One slice of the points expiry: up to max_users users with lots due."""
        return points.expire_points(self.ledger, now_ms, max_users)

    def spend_points(self, user_id: str, amount: int, ref: str, now_ms: int) -> RewardRecord | None:
        return points.spend_points(self.ledger, user_id, amount, ref, now_ms)

    def adjust_points(self, user_id: str, delta: int, ref: str, now_ms: int, reason: str,
                      expires_days: int | None = None) -> RewardRecord | None:
        return points.adjust_points(self.ledger, self.config, user_id, delta, ref, now_ms, reason, expires_days)

    def withdraw(self, user_id: str, amount_cents: int, ref: str, now_ms: int) -> RewardRecord | None:
        return account.withdraw(self.ledger, self.config, user_id, amount_cents, ref, now_ms)

    def set_address(self, user_id: str, address: str, now_ms: int) -> list[RewardRecord]:
        return account.set_address(self.ledger, user_id, address, now_ms)

    # --- reads -------------------------------------------------------------------

    def wallet(self, user_id: str, now_ms: int) -> dict[str, object]:
        return views.wallet(self.ledger, self.config, user_id, now_ms)

    def report(self, now_ms: int) -> dict[str, object]:
        return views.report(self.ledger, self.config, now_ms)

    # --- outbox ------------------------------------------------------------------

    def outbox(self, max_records: int = 1000) -> OutboxBatch:
        return outbox.pending(self.ledger, max_records)

    def outbox_of(self, users: Collection[str]) -> OutboxBatch:
        """Every undelivered record of these users."""
        return outbox.waiting(self.ledger, users)

    def tidy_outbox(self, users: Collection[str]) -> set[str]:
        """Those of these users with undelivered records; the others leave the outbox index."""
        return self.ledger.tidy_outbox(users)

    def scan_outbox(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One step of a walk over the users with undelivered records (cursor 0 starts and ends it)."""
        return self.ledger.scan_outbox(cursor, count)

    def ack(self, batch: OutboxBatch) -> None:
        """After the batch's records are durably published."""
        outbox.ack(self.ledger, batch)


def _new(outcomes: Sequence[granting.Outcome]) -> list[RewardRecord]:
    return [record for outcome in outcomes for record in outcome.new]
