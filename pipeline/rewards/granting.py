"""Granting prizes and redeeming coupons, a batch of triggers at a time: a trigger
(a tier entered, an input event, a claimed code) fires rules, each rule gives a
grant intent, the intent reserves budget, stock and pool coupons on its
campaign, the catalogue issues the items, and the user's wallet is written (the
reservation is released if the wallet refuses). Referral coupons step up
instead: each new step cancels the unused coupon held and issues a bigger one.
Coupons named on a purchase are redeemed before the purchase's own grants.

A batch is a list of steps in trigger order, run in waves of four pipelined
round trips each, however many steps a wave holds:

1. read what the decisions need (grants made before, per-user counts, wallets,
   referral state, shipping addresses);
2. decide in memory, reserve on the campaigns (reserve.lua per grant, in
   trigger order, so a budget running out mid-batch stops the same grants as
   one trigger at a time would);
3. index the users written, then write the user side (grant.lua, redeem.lua,
   in trigger order);
4. release what the user side refused, index the users again.

A step whose decision depends on the outcome of an earlier step of the same user
starts the next wave, and every later step goes with it (campaigns are still
taken from in trigger order): a step-up or a redemption after a step-up, a
redemption after a grant. Redemptions after redemptions are decided on the wallet as the
earlier ones leave it. So a batch writes exactly what one trigger at a time does,
in one wave unless a customer's own triggers depend on each other.

Every grant is idempotent on (rule, user, trigger), so replaying a trigger
grants nothing twice (ledger.py explains why this holds on Redis Cluster).

A campaign with a control group (holdout_percent) records each customer's arm
the first time one of its rules fires for them (an `assignment` record, once per
campaign and customer, before any grant); a held-out customer's triggers grant
nothing, so nothing is reserved on the campaign for them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import orjson

from tierflow.pipeline.rewards import catalogue, redeem, redemption, rules
from tierflow.pipeline.rewards.catalogue import IssueContext, ReferralCoupon, UniversalCode
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.ledger import (
    GrantCall,
    Ledger,
    PoolNeed,
    Reads,
    RedeemCall,
    Reservation,
    ReserveCall,
    RewardKeys,
    Touch,
    Update,
    Wants,
    dedupe_key,
)
from tierflow.pipeline.rewards.rules import EventRules, GrantIntent
from tierflow.pipeline.rewards.wallet import RawWallet
from tierflow.schemas import reward_grants
from tierflow.schemas.events import Event, Purchase
from tierflow.schemas.reward_grants import RewardItem, RewardRecord
from tierflow.schemas.tier_changes import TierChange

GrantStatus = Literal[
    "granted", "redeemed", "assigned", "duplicate", "budget", "stock", "pool", "limit", "conflict",
]


@dataclass(frozen=True, slots=True)
class Outcome:
    status: GrantStatus
    records: list[RewardRecord]  # new records when granted or redeemed; the stored ones when a duplicate
    prize_id: str | None = None  # out of stock / pool empty

    @property
    def new(self) -> list[RewardRecord]:
        return self.records if self.status in ("granted", "redeemed", "assigned") else []


@dataclass(frozen=True, slots=True)
class Grant:
    intent: GrantIntent


@dataclass(frozen=True, slots=True)
class StepUp:
    """A referral coupon rule fired by an accepted invite (`invitee`: the event, counted once)."""

    intent: GrantIntent
    invitee: str


@dataclass(frozen=True, slots=True)
class Redeem:
    purchase: Purchase
    ts_ms: int


@dataclass(frozen=True, slots=True)
class Assign:
    """A rule of a campaign with a control group fired: record the customer's arm (once)."""

    intent: GrantIntent


Step = Grant | StepUp | Redeem | Assign


def user_of(step: Step) -> str:
    return step.purchase.user_id if isinstance(step, Redeem) else step.intent.user_id


# --- steps: pure -------------------------------------------------------------------


def event_steps(config: RewardsConfig, event_rules: EventRules, events: Sequence[tuple[Event, int]],
                first_purchase: Mapping[str, int]) -> list[Step]:
    """Valid input events (event, event time), after the state store applied them: each
    purchase's coupons are redeemed, then the rules the event fires grant.
    `first_purchase`: users' earliest purchase times from the state store."""
    steps: list[Step] = []
    listened = event_rules.by_type
    for event, ts_ms in events:
        if type(event) is Purchase and event.coupons:
            steps.append(Redeem(event, ts_ms))
        if type(event) not in listened:
            continue  # most events: no rule listens to their type
        for intent in rules.match_event(config, event, ts_ms, first_purchase.get(event.user_id), event_rules):
            referral = isinstance(config.prizes[intent.prize_id], ReferralCoupon)  # interactions only (load check)
            steps += intent_steps(config, intent, StepUp(intent, event.event_id) if referral else Grant(intent))
    return steps


def change_steps(config: RewardsConfig, changes: Sequence[TierChange]) -> list[Step]:
    """Raises ValueError if a change's `event_time` is not a real time."""
    return [step for change in changes for intent in rules.match_tier_change(config, change)
            for step in intent_steps(config, intent, Grant(intent))]


def intent_steps(config: RewardsConfig, intent: GrantIntent, grant: Grant | StepUp) -> list[Step]:
    """The steps of a fired rule: its customer's arm when the campaign keeps a control
    group, then the grant unless the customer is held out."""
    assign: list[Step] = [Assign(intent)] if config.campaigns[intent.campaign_id].holdout_percent else []
    return assign if intent.held_out else [*assign, grant]


def assignment_record(intent: GrantIntent, now_ms: int) -> RewardRecord:
    """The customer's arm in the campaign, at the trigger that first put them in it."""
    return RewardRecord(
        record_id=f"assignment:{intent.campaign_id}:{intent.user_id}", kind="assignment",
        user_id=intent.user_id, at_ms=intent.at_ms, recorded_ms=now_ms, items=[], campaign=intent.campaign_id,
        rule=intent.rule_id, trigger=intent.trigger_id, reason="control" if intent.held_out else "treated",
    )


def assignment_dedupe(campaign_id: str) -> str:
    return dedupe_key("assign", campaign_id)


def waves(steps: Sequence[Step]) -> Iterator[Sequence[Step]]:
    """Consecutive runs of steps none of which depends on the outcome of another in its run."""
    start = 0
    stepped: set[str] = set()
    granted: set[str] = set()
    for i, step in enumerate(steps):
        user = user_of(step)
        # A plain grant reads nothing an earlier step writes; a step-up reads the coupon
        # statuses and referral state a step-up writes; a redemption also reads the coupons
        # a grant issues.
        if not isinstance(step, Grant) and (user in stepped or (isinstance(step, Redeem) and user in granted)):
            yield steps[start:i]
            start = i
            stepped.clear()
            granted.clear()
        if isinstance(step, StepUp):
            stepped.add(user)
        elif isinstance(step, Grant):
            granted.add(user)
    if start < len(steps):
        yield steps[start:]


# --- running a batch ----------------------------------------------------------------


def run(ledger: Ledger, config: RewardsConfig, steps: Sequence[Step], now_ms: int) -> list[Outcome]:
    """Each step's outcome, in order. Raises if any Redis call raised: what was written
    stays written, and running the steps again writes nothing twice. Assignments are
    written first (one round trip), so a customer's arm precedes their grants."""
    assigns = [n for n, step in enumerate(steps) if isinstance(step, Assign)]
    if not assigns:
        return _run(ledger, config, steps, now_ms)
    outcomes: list[Outcome | None] = [None] * len(steps)
    for n, outcome in zip(assigns, _assign(ledger, [steps[n] for n in assigns], now_ms), strict=True):  # type: ignore[misc]
        outcomes[n] = outcome
    others = [n for n, step in enumerate(steps) if not isinstance(step, Assign)]
    for n, outcome in zip(others, _run(ledger, config, [steps[n] for n in others], now_ms), strict=True):
        outcomes[n] = outcome
    return outcomes  # type: ignore[return-value]


def _assign(ledger: Ledger, steps: Sequence[Assign], now_ms: int) -> list[Outcome]:
    """Each customer's arm, once per campaign: the first trigger's record stays."""
    records = [assignment_record(step.intent, now_ms) for step in steps]
    results = ledger.update_all([
        (record.user_id, assignment_dedupe(step.intent.campaign_id),
         Update(push=[[RewardKeys.OUTBOX, reward_grants.encode(record).decode()]]))
        for step, record in zip(steps, records, strict=True)])
    return [Outcome("assigned", [record]) if result == 1 else Outcome("duplicate", [])
            for record, result in zip(records, results, strict=True)]


def _run(ledger: Ledger, config: RewardsConfig, steps: Sequence[Step], now_ms: int) -> list[Outcome]:
    outcomes: list[Outcome] = []
    first_of: dict[str, int] = {}  # idempotency key -> the step that first asked for it
    asked_again: list[tuple[int, int]] = []  # (step, the step that first asked for its grant)
    for wave in waves(steps):
        outcomes += _Wave(ledger, config, now_ms, first_of, asked_again, len(outcomes)).run(wave)
    # A grant asked for twice in one batch: what the first ask got, as a replay would see it.
    for later, first in asked_again:
        got = outcomes[first]
        outcomes[later] = Outcome("duplicate", got.records) if got.status == "granted" else got
    return outcomes


@dataclass
class _Pending:
    """A grant decided in memory, waiting for its reservation."""

    index: int
    intent: GrantIntent
    limit: int
    reserve: ReserveCall
    expiry_ms: int | None = None  # the soonest expiry of the points it issues
    address: str | None = None
    held: dict[str, str] | None = None  # step-up: the referral state read ({"item", "step"})
    state_text: str = ""
    reached: int = 0
    old: RewardItem | None = None  # step-up: the coupon it cancels


class _Wave:
    """One wave of a batch: steps none of which depends on the outcome of another."""

    def __init__(self, ledger: Ledger, config: RewardsConfig, now_ms: int, first_of: dict[str, int],
                 asked_again: list[tuple[int, int]], offset: int) -> None:
        self.ledger, self.config, self.now_ms = ledger, config, now_ms
        self.first_of, self.asked_again, self.offset = first_of, asked_again, offset

    def run(self, steps: Sequence[Step]) -> list[Outcome]:
        """The four round trips of the module docstring, decisions in memory in between."""
        outcomes: list[Outcome | None] = [None] * len(steps)
        pending: list[_Pending] = []
        redeems: dict[int, RedeemCall] = {}
        touches: list[Touch] = []
        self._decide(steps, self.ledger.read_wave(self._wants(steps)), outcomes, pending, redeems, touches)
        reservations = self.ledger.reserve_all([p.reserve for p in pending])
        calls: dict[int, GrantCall | RedeemCall] = dict(redeems)
        for p, reservation in zip(pending, reservations, strict=True):
            if reservation.reserved:
                calls[p.index] = self._issue(p, reservation)
                touches.append((p.intent.user_id, p.expiry_ms))
            else:
                outcomes[p.index] = Outcome(reservation.status, [], reservation.prize_id)  # type: ignore[arg-type]
        order = sorted(calls)
        replies = self.ledger.write_all([calls[n] for n in order], touches)
        releases: list[tuple[str, str, Sequence[str]]] = []
        by_index = {p.index: p for p in pending}
        for n, reply in zip(order, replies, strict=True):
            call = calls[n]
            if isinstance(call, RedeemCall):
                outcomes[n] = Outcome("redeemed", reply)  # type: ignore[arg-type]
                continue
            status, stored = reply  # type: ignore[misc]
            if status == "granted":
                outcomes[n] = Outcome("granted", list(call.records))
            elif status == "duplicate":
                outcomes[n] = Outcome("duplicate", stored or [])
            else:
                p = by_index[n]
                releases.append((p.intent.campaign_id, call.key, [pool.prize_id for pool in p.reserve.pools]))
                outcomes[n] = Outcome(status, [])  # type: ignore[arg-type]
        self.ledger.settle(releases, touches)
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]

    def _decide(self, steps: Sequence[Step], reads: Reads, outcomes: list[Outcome | None],
                pending: list[_Pending], redeems: dict[int, RedeemCall], touches: list[Touch]) -> None:
        """In step order: the outcomes known from the reads alone, the grants that go on to
        their reservation, the redemptions, and the users to index around the writes."""
        planned: dict[tuple[str, str], int] = {}  # (user, rule) -> grants decided in this wave
        applied = set(reads.applied)
        for n, step in enumerate(steps):
            user = user_of(step)
            if isinstance(step, Redeem):
                redeems[n] = self._redeem(step, reads.wallets[user], applied)
                touches.append((user, None))
            elif isinstance(step, StepUp):
                outcomes[n] = self._step_up(n, step, reads, pending)
            else:
                first = self.first_of.setdefault(step.intent.idempotency_key, self.offset + n)
                if first != self.offset + n:
                    self.asked_again.append((self.offset + n, first))
                    outcomes[n] = Outcome("duplicate", [])  # settled by run() once the first is known
                    continue
                outcome = outcomes[n] = self._grant(n, step.intent, reads, planned, pending)
                if outcome is not None and outcome.status == "duplicate":
                    touches.append((user, None))  # a replay: make sure its records get delivered

    # --- reads ------------------------------------------------------------------------

    def _wants(self, steps: Sequence[Step]) -> Wants:
        grants, counts, addresses, applied, invites, referrals, wallets = [], [], [], [], [], [], []
        for step in steps:
            user = user_of(step)
            if isinstance(step, Redeem):
                wallets.append(user)
                applied += [(user, redemption.dedupe(step.purchase, c)) for c in dict.fromkeys(step.purchase.coupons)]
            elif isinstance(step, StepUp):
                wallets.append(user)
                invites.append((user, step.intent.rule_id, step.invitee))
                referrals.append((user, step.intent.rule_id))
            else:
                intent = step.intent
                grants.append((user, intent.idempotency_key))
                if self.config.rules[intent.rule_id].per_user > 0:
                    counts.append((user, intent.rule_id))
                if _physical(self.config, intent.prize_id):
                    addresses.append(user)
        return Wants(grants, list(dict.fromkeys(counts)), list(dict.fromkeys(addresses)), applied, invites,
                     referrals, list(dict.fromkeys(wallets)))

    # --- decisions --------------------------------------------------------------------

    def _grant(self, n: int, intent: GrantIntent, reads: Reads, planned: dict[tuple[str, str], int],
               pending: list[_Pending]) -> Outcome | None:
        """None when the grant goes ahead (pending its reservation)."""
        stored = reads.grants[intent.idempotency_key]
        if stored is not None:
            return Outcome("duplicate", stored)
        limit = self.config.rules[intent.rule_id].per_user
        slot = (intent.user_id, intent.rule_id)
        if limit > 0:
            # Earlier grants of the rule in this wave count as made: were one refused by its
            # campaign, this one (same prize, same campaign, later) would be refused too.
            if reads.counts[slot] + planned.get(slot, 0) >= limit:
                return Outcome("limit", [])
            planned[slot] = planned.get(slot, 0) + 1
        needs = catalogue.needs(intent.prize_id, self.config.prizes, self.config.point_value_cents)
        stock, pools = _campaign_needs(self.config, needs)
        reserve = ReserveCall(intent.campaign_id, intent.idempotency_key, needs.cost_cents,
                              self.config.campaigns[intent.campaign_id].budget_cents, stock, pools)
        expiry = _points_expiry(intent.at_ms, catalogue.flatten(intent.prize_id, self.config.prizes))
        pending.append(_Pending(n, intent, limit, reserve, expiry, reads.addresses.get(intent.user_id)))
        return None

    def _step_up(self, n: int, step: StepUp, reads: Reads, pending: list[_Pending]) -> Outcome | None:
        """Referral coupon: on reaching a new step, cancel the coupon held (if still unused)
        and issue the next one. Never mutates a coupon. None when it goes ahead."""
        intent = step.intent
        prize = self.config.prizes[intent.prize_id]
        assert isinstance(prize, ReferralCoupon)
        user, rule_id = intent.user_id, intent.rule_id
        reached = catalogue.reached_step(prize, reads.invites[(user, rule_id)])
        state_text = reads.referrals[(user, rule_id)]
        held = orjson.loads(state_text) if state_text else None
        held_step = held["step"] if held else 0
        wallet = reads.wallets[user]
        if reached <= held_step or (held is not None and wallet.status.get(held["item"]) != "active"):
            return Outcome("duplicate", [])  # nothing new: the coupon grows only while unused
        key = replace(intent, trigger_id=f"step:{reached}").idempotency_key
        reserve = ReserveCall(intent.campaign_id, key, catalogue.step_cost(prize, held_step, reached),
                              self.config.campaigns[intent.campaign_id].budget_cents)
        old = wallet.item(held["item"]) if held is not None else None
        assert held is None or old is not None  # the referral state names an issued coupon
        pending.append(_Pending(n, intent, 0 if held else 1, reserve, held=held, state_text=state_text,
                                reached=reached, old=old))
        return None

    def _redeem(self, step: Redeem, wallet: RawWallet, applied: set[str]) -> RedeemCall:
        """Decided on the wallet as this batch's earlier redemptions leave it."""
        purchase = step.purchase
        order = redeem.Order.from_purchase(purchase, step.ts_ms, self.config.shop)
        ops = []
        for coupon_id in dict.fromkeys(purchase.coupons):
            op = redemption.plan(purchase, coupon_id, wallet, order, self.now_ms)
            if op.dedupe not in applied:
                applied.add(op.dedupe)
                if op.coupon:
                    wallet.status[op.coupon] = "redeemed"
            ops.append(op)
        return RedeemCall(purchase.user_id, ops)

    def _issue(self, p: _Pending, reservation: Reservation) -> GrantCall:
        intent, config = p.intent, self.config
        prize = config.prizes[intent.prize_id]
        if not isinstance(prize, ReferralCoupon):
            items = catalogue.issue(intent.prize_id, config.prizes, issue_context(config, intent, p.address),
                                    reservation.codes)
            record = grant_record(config, intent, items, reservation.cost_cents, self.now_ms)
            return GrantCall(intent.user_id, intent.idempotency_key, intent.rule_id, p.limit, [record], items)
        step = replace(intent, trigger_id=f"step:{p.reached}")
        item = catalogue.referral_item(intent.prize_id, prize, p.reached, issue_context(config, step))
        records = [grant_record(config, step, [item], reservation.cost_cents, self.now_ms)]
        if p.old is not None:
            old = p.old
            records.insert(0, RewardRecord(
                record_id=f"cancellation:{old.item_id}", kind="cancellation", user_id=intent.user_id,
                at_ms=intent.at_ms, recorded_ms=self.now_ms, items=[old], campaign=old.campaign, rule=old.rule,
                prize=old.prize, prize_type="referral_coupon", trigger=step.trigger_id,
                idempotency_key=step.idempotency_key, reason="referral_step_up", replaced_by=item.item_id,
            ))
        referral = {"expect": p.state_text, "cancel": p.held["item"] if p.held else "",
                    "state": orjson.dumps({"item": item.item_id, "step": p.reached}).decode()}
        return GrantCall(intent.user_id, step.idempotency_key, intent.rule_id, p.limit, records, [item], referral)


def _physical(config: RewardsConfig, prize_id: str) -> bool:
    return any(isinstance(c.prize, catalogue.Physical) for c in catalogue.flatten(prize_id, config.prizes))


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
