"""The reward engine: pure decisions (rules, catalogue, redeem) wired to the
Redis ledger. This is the whole integration surface for the worker:

    engine = RewardEngine(redis_client, ctx.config.rewards)
    engine.on_tier_change(change_value_dict, now_ms)   # each `tier.changes` record
    engine.on_event(valid.event, valid.ts_ms, now_ms)  # each valid input event, after state apply
    engine.expire_points(now_ms)                       # on a timer
    batch = engine.outbox(max_records)                 # after each batch and on a timer:
    ... produce batch.records to `reward.grants` (key user_id, value records.encode(r)), flush ...
    engine.ack(batch)

Every call is idempotent: replaying a tier change or an event grants, redeems
and records nothing twice. Each call returns the records it newly wrote; the
same records wait in the outbox until acknowledged, so grants made by the CLI
(code claims), sweeps, or a call that crashed before its records were
published still reach `reward.grants` (at least once; `record_id` is stable).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import msgspec
import orjson
import redis

from tierflow.pipeline.rewards import catalogue, redeem, rules
from tierflow.pipeline.rewards.catalogue import IssueContext, ReferralCoupon, UniversalCode
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.ledger import Ledger, PoolNeed, RewardKeys, Update
from tierflow.pipeline.rewards.report import ReportBuilder, stocked_prizes
from tierflow.pipeline.rewards.rules import GrantIntent, TierChange
from tierflow.pipeline.rewards.wallet import (
    RawWallet,
    RewardError,
    balances,
    items_of,
    plan_consume,
    wallet_view,
)
from tierflow.schemas.events import Event, Interaction, Purchase
from tierflow.schemas.reward_grants import RewardItem, RewardRecord, decode, encode

K = RewardKeys
# Compare-and-set commits retry on a concurrent change to the same wallet;
# events of one user arrive on one partition, so more than one retry is rare.
_CAS_ATTEMPTS = 5
_item_decoder = msgspec.json.Decoder(RewardItem)

GrantStatus = Literal["granted", "duplicate", "budget", "stock", "pool", "limit", "conflict"]
ClaimStatus = Literal[
    "granted", "already_claimed", "exhausted", "unknown_code", "inactive", "budget_exhausted",
    "out_of_stock", "limit",
]
_CLAIM_STATUS: dict[str, ClaimStatus] = {
    "granted": "granted", "duplicate": "already_claimed", "pool": "exhausted", "budget": "budget_exhausted",
    "stock": "out_of_stock", "limit": "limit", "conflict": "limit",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    status: GrantStatus
    records: list[RewardRecord]  # new records when granted; the stored ones when a duplicate
    prize_id: str | None = None  # out of stock / pool empty


@dataclass(frozen=True, slots=True)
class ClaimResult:
    status: ClaimStatus
    record: RewardRecord | None = None  # the grant (the earlier one when already claimed)

    @property
    def coupon(self) -> RewardItem | None:
        if self.record is None:
            return None
        return next((i for i in self.record.items if i.terms is not None), None)


@dataclass(frozen=True, slots=True)
class OutboxBatch:
    records: list[RewardRecord]
    raw: dict[str, list[str]]  # user -> records exactly as stored, for ack


def initial_status(item: RewardItem) -> str:
    if item.fulfilment is not None:
        return item.fulfilment.status
    return "granted" if item.type == "cash_envelope" else "active"


def _score(expires_ms: int | None) -> str:
    return "+inf" if expires_ms is None else str(expires_ms)


def _ledger_entry(op: str, lot: str, points: int, at_ms: int, ref: str,
                  expires_ms: int | None = None) -> bytes:
    return orjson.dumps({"op": op, "lot": lot, "points": points, "at_ms": at_ms, "ref": ref,
                         "expires_ms": expires_ms})


def grant_payload(records: Sequence[RewardRecord], items: Sequence[RewardItem],
                  referral: Mapping[str, str] | None = None) -> dict[str, object]:
    """What grant.lua writes for one grant."""
    encoded = [encode(r).decode() for r in records]
    ref = records[-1].idempotency_key or ""
    lots = [i for i in items if i.type == "points"]
    return {
        "stored": "[" + ",".join(encoded) + "]",
        "records": encoded,
        "items": [[i.item_id, encode_item(i), initial_status(i)] for i in items],
        "lots": [[i.item_id, i.points, _score(i.expires_ms)] for i in lots],
        "ledger": [_ledger_entry("earn", i.item_id, i.points or 0, i.granted_ms, ref, i.expires_ms).decode()
                   for i in lots],
        "referral": referral,
    }


def encode_item(item: RewardItem) -> str:
    return msgspec.json.encode(item).decode()


def _stored(text: str) -> list[RewardRecord]:
    return [msgspec.convert(r, RewardRecord) for r in orjson.loads(text)]


class RewardEngine:
    def __init__(self, client: redis.Redis, config: RewardsConfig) -> None:
        self.config = config
        self.ledger = Ledger(client)

    # --- triggers --------------------------------------------------------------

    def on_tier_change(self, change: Mapping[str, object] | TierChange, now_ms: int) -> list[RewardRecord]:
        """A `tier.changes` record value (dict) or a parsed TierChange. Raises ValueError if malformed."""
        parsed = change if isinstance(change, TierChange) else TierChange.parse(change)
        return self._grant_all(rules.match_tier_change(self.config, parsed), now_ms)

    def on_event(self, event: Event, ts_ms: int, now_ms: int) -> list[RewardRecord]:
        """A valid input event, after the state store applied it (first-purchase
        rules read the user's first purchase time from there)."""
        written: list[RewardRecord] = []
        if isinstance(event, Purchase) and event.coupons:
            written += self._redeem(event, ts_ms, now_ms)
        first = (self.ledger.first_purchase_ms(event.user_id)
                 if rules.wants_first_purchase(self.config, event) else None)
        intents = rules.match_event(self.config, event, ts_ms, first)
        for intent in intents:
            if isinstance(self.config.prizes[intent.prize_id], ReferralCoupon):
                assert isinstance(event, Interaction)  # checked at load
                written += self._step_up(intent, event, now_ms)
            else:
                written += self._grant_new(intent, now_ms)
        return written

    def claim_code(self, code: str, user_id: str, now_ms: int) -> ClaimResult:
        """A user typed a public code. Distinct outcomes for the CLI's exit codes."""
        match = rules.match_code(self.config, code, user_id, now_ms)
        if isinstance(match, str):
            return ClaimResult(match)
        outcome = self._grant(match, now_ms)
        return ClaimResult(_CLAIM_STATUS[outcome.status], outcome.records[-1] if outcome.records else None)

    # --- grants --------------------------------------------------------------

    def _grant_all(self, intents: Sequence[GrantIntent], now_ms: int) -> list[RewardRecord]:
        return [r for intent in intents for r in self._grant_new(intent, now_ms)]

    def _grant_new(self, intent: GrantIntent, now_ms: int) -> list[RewardRecord]:
        outcome = self._grant(intent, now_ms)
        return outcome.records if outcome.status == "granted" else []

    def _grant(self, intent: GrantIntent, now_ms: int) -> Outcome:
        cfg, key, user = self.config, intent.idempotency_key, intent.user_id
        stored = self.ledger.stored_grant(user, key)
        if stored is not None:
            self.ledger.touch(user)  # a replay: make sure its records get delivered
            return Outcome("duplicate", _stored(stored))
        rule, campaign = cfg.rules[intent.rule_id], cfg.campaigns[intent.campaign_id]
        needs = catalogue.needs(intent.prize_id, cfg.prizes, cfg.point_value_cents)
        pools = []
        for pid, count in needs.pools.items():
            pool = cfg.prizes[pid]
            assert isinstance(pool, UniversalCode)
            pools.append(PoolNeed(pid, count, pool.code, pool.count))
        stock = [(pid, units, cfg.prizes[pid].stock) for pid, units in needs.stock.items()]  # type: ignore[union-attr]
        components = catalogue.flatten(intent.prize_id, cfg.prizes)
        expiry = min((intent.at_ms + c.prize.expires_days * catalogue.DAY_MS for c in components
                      if isinstance(c.prize, catalogue.Points) and c.prize.expires_days is not None),
                     default=None)

        reservation = self.ledger.reserve(intent.campaign_id, key, needs.cost_cents, campaign.budget_cents,
                                          stock, pools)
        if not reservation.reserved:
            return Outcome(reservation.status, [], reservation.prize_id)  # type: ignore[arg-type]
        self.ledger.touch(user, expiry)
        address = None
        if any(isinstance(c.prize, catalogue.Physical) for c in components):
            address = self.ledger.read(user).account.get("address")
        ctx = self._issue_context(intent, address)
        items = catalogue.issue(intent.prize_id, cfg.prizes, ctx, reservation.codes)
        record = self._grant_record(intent, items, reservation.cost_cents, now_ms)
        status, stored = self.ledger.commit_grant(user, key, intent.rule_id, rule.per_user,
                                                  grant_payload([record], items))
        self.ledger.touch(user, expiry)
        if status == "granted":
            return Outcome("granted", [record])
        if status == "duplicate":
            assert stored is not None
            return Outcome("duplicate", _stored(stored))
        self.ledger.release(intent.campaign_id, key, [p.prize_id for p in pools])
        return Outcome(status, [])  # type: ignore[arg-type]

    def _issue_context(self, intent: GrantIntent, address: str | None = None) -> IssueContext:
        return IssueContext(intent.campaign_id, intent.rule_id, intent.idempotency_key, intent.at_ms,
                            self.config.shop, self.config.point_value_cents, address)

    def _grant_record(self, intent: GrantIntent, items: list[RewardItem], cost_cents: int,
                      now_ms: int) -> RewardRecord:
        prize = self.config.prizes[intent.prize_id]
        return RewardRecord(
            record_id=f"grant:{intent.idempotency_key}", kind="grant", user_id=intent.user_id,
            at_ms=intent.at_ms, recorded_ms=now_ms, items=items, cost_cents=cost_cents,
            campaign=intent.campaign_id, rule=intent.rule_id, prize=intent.prize_id,
            prize_type=catalogue.prize_type(prize), trigger=intent.trigger_id,  # type: ignore[arg-type]
            idempotency_key=intent.idempotency_key,
        )

    def _step_up(self, intent: GrantIntent, event: Interaction, now_ms: int) -> list[RewardRecord]:
        """Referral coupon: count the invite; on reaching a new step, cancel the
        coupon held (if still unused) and issue the next one. Never mutates a coupon."""
        prize = self.config.prizes[intent.prize_id]
        assert isinstance(prize, ReferralCoupon)
        user, rule_id = intent.user_id, intent.rule_id
        # Each accepted-invite event counts once, however often it is replayed.
        invites = self.ledger.add_invite(user, rule_id, event.event_id)
        reached = catalogue.reached_step(prize, invites)
        state_text, statuses = self.ledger.referral(user, rule_id)
        held = orjson.loads(state_text) if state_text else None
        held_step = held["step"] if held else 0
        if reached <= held_step:
            return []
        if held is not None and statuses.get(held["item"]) != "active":
            return []  # the coupon grows only while unused
        step = replace(intent, trigger_id=f"step:{reached}")
        key = step.idempotency_key
        reservation = self.ledger.reserve(intent.campaign_id, key, catalogue.step_cost(prize, held_step, reached),
                                          self.config.campaigns[intent.campaign_id].budget_cents, [], [])
        if not reservation.reserved:
            return []
        self.ledger.touch(user)
        item = catalogue.referral_item(intent.prize_id, prize, reached, self._issue_context(step))
        grant = self._grant_record(step, [item], reservation.cost_cents, now_ms)
        records = [grant]
        if held is not None:
            old = _item_decoder.decode(self.ledger.read(user).items[held["item"]])
            records.insert(0, RewardRecord(
                record_id=f"cancellation:{old.item_id}", kind="cancellation", user_id=user, at_ms=intent.at_ms,
                recorded_ms=now_ms, items=[old], campaign=old.campaign, rule=old.rule, prize=old.prize,
                prize_type="referral_coupon", trigger=step.trigger_id, idempotency_key=key,
                reason="referral_step_up", replaced_by=item.item_id,
            ))
        referral = {"expect": state_text, "cancel": held["item"] if held else "",
                    "state": orjson.dumps({"item": item.item_id, "step": reached}).decode()}
        status, _ = self.ledger.commit_grant(user, key, rule_id, 0 if held else 1,
                                             grant_payload(records, [item], referral))
        self.ledger.touch(user)
        if status == "granted":
            return records
        if status != "duplicate":
            self.ledger.release(intent.campaign_id, key, [])
        return []

    # --- redemption ----------------------------------------------------------

    def _redeem(self, purchase: Purchase, ts_ms: int, now_ms: int) -> list[RewardRecord]:
        """Coupons named on a purchase: redeem the ones that apply, record why the others do not."""
        user = purchase.user_id
        order = redeem.Order.from_purchase(purchase, ts_ms, self.config.shop)
        order_cents = sum(line.amount_cents for line in order.lines)
        raw = self.ledger.read(user)
        ops = []
        for coupon_id in dict.fromkeys(purchase.coupons):
            stored = raw.items.get(coupon_id)
            item = _item_decoder.decode(stored) if stored is not None else None
            verdict = redeem.check(item, raw.status.get(coupon_id), order)
            base = RewardRecord(
                record_id=f"redemption:{purchase.event_id}:{coupon_id}", kind="redemption", user_id=user,
                at_ms=ts_ms, recorded_ms=now_ms, items=[item] if item else [], order_id=purchase.order_id,
                order_cents=order_cents, campaign=item.campaign if item else None,
                rule=item.rule if item else None, prize=item.prize if item else None,
                trigger=f"event:{purchase.event_id}",
            )
            rejected = replace_record(base, kind="redemption_rejected", reason=verdict.reason or "coupon_not_active")
            op = {"dedupe": orjson.dumps(["redeem", purchase.event_id, coupon_id]).decode(), "item": "",
                  "detail": "", "ok": encode(rejected).decode(), "fail": ""}
            if verdict.ok and item is not None:
                accepted = replace_record(base, discount_cents=verdict.discount_cents)
                op.update(item=coupon_id, ok=encode(accepted).decode(), detail=orjson.dumps({
                    "order_id": purchase.order_id, "event_id": purchase.event_id, "at_ms": ts_ms,
                    "discount_cents": verdict.discount_cents, "order_cents": order_cents,
                    "campaign": item.campaign, "rule": item.rule}).decode())
            ops.append(op)
        self.ledger.touch(user)
        written = self.ledger.redeem(user, ops)
        self.ledger.touch(user)
        return [decode(r) for r in written]

    # --- points, cash, fulfilment ------------------------------------------

    def _commit(self, user_id: str, dedupe: str, build: Callable[[RawWallet], Update]) -> bool:
        """Read the wallet, decide, commit with compare-and-set; decide again on a conflict.
        Once per dedupe key: False when it was applied before (nothing is decided again)."""
        for _ in range(_CAS_ATTEMPTS):
            if self.ledger.applied(user_id, dedupe):
                return False
            update = build(self.ledger.read(user_id))
            self.ledger.touch(user_id)
            result = self.ledger.update(user_id, dedupe, update)
            self.ledger.touch(user_id)
            if result != 0:
                return result == 1
        raise RewardError(f"user {user_id!r}: wallet kept changing, try again")

    def expire_points(self, now_ms: int, max_users: int = 1000) -> list[RewardRecord]:
        """Expire every points lot due by now_ms, for up to max_users users; the expiry records.
        A lot changed meanwhile (spent) is left for the next sweep."""
        written: list[RewardRecord] = []
        for user in self.ledger.due_expiries(now_ms, max_users):
            for item, left in _lots(self.ledger.read(user)):
                if not left or item.expires_ms is None or item.expires_ms > now_ms:
                    continue
                record = RewardRecord(
                    record_id=f"expiry:{item.item_id}", kind="expiry", user_id=user, at_ms=item.expires_ms,
                    recorded_ms=now_ms, items=[item], campaign=item.campaign, rule=item.rule, prize=item.prize,
                    prize_type="points", points_delta=-left, reason="points_expired")
                update = Update(
                    checks=[[K.REMAINING, item.item_id, str(left)]],
                    hset=[[K.REMAINING, item.item_id, "0"]], zrem=[[K.EXPIRY, item.item_id]],
                    push=[[K.LEDGER, _ledger_entry("expire", item.item_id, -left, item.expires_ms,
                                                   record.record_id).decode()],
                          [K.OUTBOX, encode(record).decode()]])
                self.ledger.touch(user)
                if self.ledger.update(user, orjson.dumps(["expire", item.item_id]).decode(), update) == 1:
                    written.append(record)
                self.ledger.touch(user)
            self.ledger.reindex_expiry(user)
        return written

    def spend_points(self, user_id: str, points: int, ref: str, now_ms: int) -> RewardRecord | None:
        """Spend points (cash offset, redemption): soonest-expiring lots first. Once per `ref`
        (e.g. the order id): a repeat returns None. Raises RewardError if the balance is short."""
        return self._consume(user_id, points, ref, now_ms, "points_spend")

    def adjust_points(self, user_id: str, delta: int, ref: str, now_ms: int, reason: str,
                      expires_days: int | None = None) -> RewardRecord | None:
        """A manual correction, once per `ref`: positive adds a lot (expiring after
        expires_days, or never), negative takes points like a spend."""
        if delta < 0:
            return self._consume(user_id, -delta, ref, now_ms, "points_adjust", reason)
        if delta == 0:
            raise RewardError("an adjustment needs a non-zero delta")
        expires = now_ms + expires_days * catalogue.DAY_MS if expires_days is not None else None
        key = orjson.dumps(["adjust", ref]).decode()
        item = RewardItem(catalogue.item_id("P", key, 0), "points", prize="adjustment", campaign=None, rule=None,
                          value_cents=delta * self.config.point_value_cents, granted_ms=now_ms, points=delta,
                          expires_ms=expires)
        record = RewardRecord(record_id=f"points_adjust:{ref}", kind="points_adjust", user_id=user_id,
                              at_ms=now_ms, recorded_ms=now_ms, items=[item], prize_type="points",
                              points_delta=delta, reason=reason)
        update = Update(
            checks=[[K.ITEMS, item.item_id, None]],
            hset=[[K.ITEMS, item.item_id, encode_item(item)], [K.STATUS, item.item_id, "active"],
                  [K.REMAINING, item.item_id, str(delta)]],
            zadd=[[K.EXPIRY, _score(expires), item.item_id]],
            push=[[K.LEDGER, _ledger_entry("adjust", item.item_id, delta, now_ms, ref, expires).decode()],
                  [K.OUTBOX, encode(record).decode()]])
        self.ledger.touch(user_id, expires)
        return record if self._commit(user_id, key, lambda _raw: update) else None

    def _consume(self, user_id: str, points: int, ref: str, now_ms: int,
                 kind: Literal["points_spend", "points_adjust"], reason: str | None = None) -> RewardRecord | None:
        if points <= 0:
            raise RewardError("points to take must be positive")
        op = "spend" if kind == "points_spend" else "adjust"
        record: list[RewardRecord] = []

        def build(raw: RawWallet) -> Update:
            changes = plan_consume(_lots(raw), points, now_ms)
            rec = RewardRecord(record_id=f"{kind}:{ref}", kind=kind, user_id=user_id, at_ms=now_ms,
                               recorded_ms=now_ms, items=[c.item for c in changes], prize_type="points",
                               points_delta=-points, reason=reason or ref)
            record[:] = [rec]
            return Update(
                checks=[[K.REMAINING, c.item.item_id, str(c.before)] for c in changes],
                hset=[[K.REMAINING, c.item.item_id, str(c.after)] for c in changes],
                zrem=[[K.EXPIRY, c.item.item_id] for c in changes if c.after == 0],
                push=[*([K.LEDGER, _ledger_entry(op, c.item.item_id, c.after - c.before, now_ms, ref).decode()]
                        for c in changes), [K.OUTBOX, encode(rec).decode()]])

        return record[0] if self._commit(user_id, orjson.dumps([op, ref]).decode(), build) else None

    def withdraw(self, user_id: str, amount_cents: int, ref: str, now_ms: int) -> RewardRecord | None:
        """Cash out available envelope money (to the user's bound card, downstream of
        `reward.grants`). At least rewards.withdraw_min_cents; once per `ref`."""
        minimum = self.config.withdraw_min_cents
        if amount_cents < max(minimum, 1):
            raise RewardError(f"the smallest withdrawal is {max(minimum, 1) / 100:.2f}")
        record = RewardRecord(record_id=f"withdrawal:{ref}", kind="withdrawal", user_id=user_id, at_ms=now_ms,
                              recorded_ms=now_ms, items=[], amount_cents=amount_cents, reason=ref)

        def build(raw: RawWallet) -> Update:
            available = balances(raw, items_of(raw), now_ms).available_cents
            if amount_cents > available:
                raise RewardError(f"only {available / 100:.2f} is available (pending envelopes mature later)")
            withdrawn = raw.account.get("withdrawn")
            return Update(checks=[[K.ACCOUNT, "withdrawn", withdrawn]],
                          hset=[[K.ACCOUNT, "withdrawn", str(int(withdrawn or 0) + amount_cents)]],
                          push=[[K.OUTBOX, encode(record).decode()]])

        return record if self._commit(user_id, orjson.dumps(["withdraw", ref]).decode(), build) else None

    def set_address(self, user_id: str, address: str, now_ms: int) -> list[RewardRecord]:
        """Store the shipping address; physical prizes waiting for one become ready to ship."""
        if not address.strip():
            raise RewardError("the address is empty")
        written: list[RewardRecord] = []

        def build(raw: RawWallet) -> Update:
            waiting = [i for i in items_of(raw)
                       if i.type == "physical" and raw.status.get(i.item_id) == "awaiting_address"]
            written[:] = [RewardRecord(
                record_id=f"fulfilment:{i.item_id}:ready", kind="fulfilment", user_id=user_id, at_ms=now_ms,
                recorded_ms=now_ms, campaign=i.campaign, rule=i.rule, prize=i.prize, prize_type="physical",
                items=[msgspec.structs.replace(i, fulfilment=msgspec.structs.replace(
                    i.fulfilment, status="ready", address=address))],  # type: ignore[type-var]
                reason="address_set") for i in waiting]
            return Update(checks=[[K.STATUS, i.item_id, "awaiting_address"] for i in waiting],
                          hset=[[K.ACCOUNT, "address", address], *([K.STATUS, i.item_id, "ready"] for i in waiting)],
                          push=[[K.OUTBOX, encode(r).decode()] for r in written])

        # CAS on the waiting items' status keeps a repeated call from readying them twice.
        return written if self._commit(user_id, orjson.dumps(["address", address, now_ms]).decode(), build) else []

    # --- reads ---------------------------------------------------------------

    def wallet(self, user_id: str, now_ms: int) -> dict[str, object]:
        return wallet_view(user_id, self.ledger.read(user_id), now_ms, self.config.withdraw_min_cents)

    def report(self, now_ms: int) -> dict[str, object]:
        """Per campaign budget, inventory and pools; grants by type; points liability; envelopes.
        Reads every rewarded user's wallet: O(users), meant for operators, not the hot path."""
        builder = ReportBuilder(self.config, now_ms)
        for user in self.ledger.users():
            builder.add_user(self.ledger.read(user), self.ledger.grants(user))
        campaigns = {}
        for cid in self.config.campaigns:
            pools = [p for p in stocked_prizes(self.config, cid)
                     if isinstance(self.config.prizes[p], UniversalCode)]
            campaigns[cid] = self.ledger.campaign(cid, pools)
        return builder.build(campaigns)

    # --- outbox --------------------------------------------------------------

    def outbox(self, max_records: int = 1000) -> OutboxBatch:
        raw = self.ledger.outbox(max_records)
        return OutboxBatch([decode(r) for records in raw.values() for r in records], raw)

    def ack(self, batch: OutboxBatch) -> None:
        """After the batch's records are durably published."""
        self.ledger.ack(batch.raw)


def _lots(raw: RawWallet) -> list[tuple[RewardItem, int]]:
    return [(i, int(raw.remaining.get(i.item_id, "0"))) for i in items_of(raw) if i.type == "points"]


def replace_record(record: RewardRecord, **changes: object) -> RewardRecord:
    return msgspec.structs.replace(record, **changes)
