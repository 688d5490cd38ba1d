"""The reward ledger rebuilt from `reward.grants`, after Redis lost it (`tierflow rebuild`).

Every change the ledger scripts make to a wallet or a campaign goes out as a
record, and a user's records reach the topic in the order they were written (one
outbox per user, one partition per user). Folding each user's records in that
order therefore gives back what the scripts had written: the grants by
idempotency key and the per-rule counts (no trigger grants twice, limits hold),
the wallet items and their status, points lots with what is left of them and the
points ledger, referral steps, redemptions, the once-only marks of redemptions,
spends, adjustments, expiries, withdrawals and address changes, the cash
withdrawn; and per campaign the money spent, the reservations, the inventory
used and the pool coupons handed out.

`LedgerFold` is pure; `write` puts the result into an empty Redis. Nothing on
the topic says how many times a grant was refused (the campaigns' `denied:*`
counters start again at 0), which invites a referrer has had accepted (the
worker's replay of the input topics counts them again), or a shipping address
given while no prize waited for one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from tierflow.pipeline.lua import Pipeline, Redis
from tierflow.pipeline.rewards import catalogue, granting
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.ledger import (
    EXPIRY_INDEX,
    USERS,
    CampaignKeys,
    RewardKeys,
    dedupe_key,
    expiry_score,
    points_entry,
)
from tierflow.pipeline.rewards.wallet import encode_item
from tierflow.schemas.reward_grants import RewardItem, RewardRecord, encode


@dataclass
class UserLedger:
    """One user's reward keys as the scripts would have left them."""

    grants: dict[str, list[RewardRecord]] = field(default_factory=dict)  # idempotency key -> its records
    counts: Counter[str] = field(default_factory=Counter)
    items: dict[str, RewardItem] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    remaining: dict[str, int] = field(default_factory=dict)
    expiry: dict[str, str] = field(default_factory=dict)  # live points lot -> expiry score
    ledger: list[str] = field(default_factory=list)
    referral: dict[str, str] = field(default_factory=dict)
    dedupe: set[str] = field(default_factory=set)
    redemptions: dict[str, str] = field(default_factory=dict)
    account: dict[str, str] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # record ids folded (the topic may hold a record twice)

    def next_expiry(self) -> float | None:
        scores = [float(s) for lot, s in self.expiry.items() if self.remaining.get(lot)]
        finite = [s for s in scores if s != float("inf")]
        return min(finite, default=None)


@dataclass
class CampaignLedger:
    spent: int = 0
    reservations: dict[str, str] = field(default_factory=dict)
    stock: Counter[str] = field(default_factory=Counter)
    issued: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # pool prize -> coupons


def pool_codes(code: str, size: int) -> list[str]:
    """Every coupon of a universal-code pool, named as reserve.lua mints them."""
    width = max(3, len(str(size)))
    return [f"{code}-{n:0{width}d}" for n in range(1, size + 1)]


class LedgerFold:
    def __init__(self, config: RewardsConfig) -> None:
        self.config = config
        self.users: dict[str, UserLedger] = defaultdict(UserLedger)
        self.campaigns: dict[str, CampaignLedger] = defaultdict(CampaignLedger)
        self.records = 0

    def add(self, record: RewardRecord) -> None:
        """The next record of `record.user_id`, in topic order."""
        user = self.users[record.user_id]
        if record.record_id in user.seen:
            return
        user.seen.add(record.record_id)
        self.records += 1
        fold = getattr(self, f"_{record.kind}")
        fold(user, record)

    def _grant(self, user: UserLedger, record: RewardRecord) -> None:
        key = record.idempotency_key or record.record_id
        group = user.grants.setdefault(key, [])
        group.append(record)
        for item in record.items:
            user.items[item.item_id] = item
            user.status[item.item_id] = catalogue.initial_status(item)
            if item.type == "points":
                user.remaining[item.item_id] = item.points or 0
                user.expiry[item.item_id] = expiry_score(item.expires_ms)
                user.ledger.append(points_entry("earn", item.item_id, item.points or 0, item.granted_ms, key,
                                                item.expires_ms))
        rule = record.rule or ""
        # grant.lua counts a grant against the rule's per-user limit, except a referral
        # step-up that replaces a coupon (its records start with the cancellation).
        if not any(r.kind == "cancellation" for r in group):
            user.counts[rule] += 1
        if record.prize_type == "referral_coupon" and record.items:
            coupon = record.items[0]
            user.referral[rule] = orjson.dumps({"item": coupon.item_id, "step": coupon.step}).decode()
        self._reserve(record, key)

    def _reserve(self, record: RewardRecord, key: str) -> None:
        """The campaign side of a grant (reserve.lua): money, inventory, pool coupons."""
        campaign = self.campaigns[record.campaign or ""]
        campaign.spent += record.cost_cents
        stock: Counter[str] = Counter()
        codes: dict[str, list[str]] = defaultdict(list)
        for item in record.items:
            prize = self.config.prizes.get(item.prize)
            if isinstance(prize, catalogue.UniversalCode):
                codes[item.prize].append(item.item_id)
                campaign.issued[item.prize].add(item.item_id)
            elif prize is not None and catalogue.stocked(prize):
                stock[item.prize] += 1
        campaign.stock.update(stock)
        limits = [[pid, units, getattr(self.config.prizes[pid], "stock", 0)] for pid, units in stock.items()]
        campaign.reservations[key] = orjson.dumps({"cost": record.cost_cents, "stock": limits, "codes": codes}).decode()

    def _cancellation(self, user: UserLedger, record: RewardRecord) -> None:
        user.grants.setdefault(record.idempotency_key or record.record_id, []).append(record)
        for item in record.items:
            user.status[item.item_id] = "cancelled"

    def _redemption(self, user: UserLedger, record: RewardRecord) -> None:
        event_id, coupon_id = _redeemed(record)
        user.dedupe.add(dedupe_key("redeem", event_id, coupon_id))
        if record.kind != "redemption" or not record.items:
            return
        item = record.items[0]
        user.status[item.item_id] = "redeemed"
        # As redemption.plan writes the detail beside the coupon.
        user.redemptions[item.item_id] = orjson.dumps({
            "order_id": record.order_id, "event_id": event_id, "at_ms": record.at_ms,
            "discount_cents": record.discount_cents, "order_cents": record.order_cents,
            "campaign": item.campaign, "rule": item.rule,
        }).decode()

    _redemption_rejected = _redemption

    def _redemption_returned(self, user: UserLedger, record: RewardRecord) -> None:
        """A coupon given back when its order was refunded in full (redemption.give_back)."""
        event_id, coupon_id = (record.trigger or "").removeprefix("event:"), record.items[0].item_id
        user.dedupe.add(dedupe_key("give_back", event_id, coupon_id))
        user.status[coupon_id] = "active"

    def _expiry(self, user: UserLedger, record: RewardRecord) -> None:
        item = record.items[0]
        user.remaining[item.item_id] = 0
        user.expiry.pop(item.item_id, None)
        user.ledger.append(points_entry("expire", item.item_id, record.points_delta or 0, item.expires_ms or 0,
                                        record.record_id))
        user.dedupe.add(dedupe_key("expire", item.item_id))

    def _points_spend(self, user: UserLedger, record: RewardRecord) -> None:
        op = "spend" if record.kind == "points_spend" else "adjust"
        ref = record.record_id.removeprefix(f"{record.kind}:")
        user.dedupe.add(dedupe_key(op, ref))
        delta = record.points_delta or 0
        if delta > 0:  # a positive adjustment adds a lot
            lot = record.items[0]
            user.items[lot.item_id] = lot
            user.status[lot.item_id] = "active"
            user.remaining[lot.item_id] = delta
            user.expiry[lot.item_id] = expiry_score(lot.expires_ms)
            user.ledger.append(points_entry("adjust", lot.item_id, delta, record.at_ms, ref, lot.expires_ms))
            return
        # The record lists the lots taken from in the order plan_consume took them:
        # each gave what it had, up to what was still wanted.
        wanted = -delta
        for lot in record.items:
            left = user.remaining.get(lot.item_id, 0)
            take = min(left, wanted)
            user.remaining[lot.item_id] = left - take
            if left == take:
                user.expiry.pop(lot.item_id, None)
            user.ledger.append(points_entry(op, lot.item_id, -take, record.at_ms, ref))
            wanted -= take

    _points_adjust = _points_spend

    def _withdrawal(self, user: UserLedger, record: RewardRecord) -> None:
        user.dedupe.add(dedupe_key("withdraw", record.record_id.removeprefix("withdrawal:")))
        user.account["withdrawn"] = str(int(user.account.get("withdrawn", "0")) + (record.amount_cents or 0))

    def _assignment(self, user: UserLedger, record: RewardRecord) -> None:
        user.dedupe.add(granting.assignment_dedupe(record.campaign or ""))

    def _fulfilment(self, user: UserLedger, record: RewardRecord) -> None:
        for item in record.items:
            user.status[item.item_id] = "ready"
            address = item.fulfilment.address if item.fulfilment else None
            if address:
                user.account["address"] = address
                user.dedupe.add(dedupe_key("address", address, record.at_ms))


def _redeemed(record: RewardRecord) -> tuple[str, str]:
    """(event id, coupon id) of a redemption or its rejection: record_id is
    redemption:<event id>:<coupon id> and trigger event:<event id>."""
    event_id = (record.trigger or "").removeprefix("event:")
    return event_id, record.record_id.removeprefix(f"redemption:{event_id}:")


def write(client: Redis, fold: LedgerFold, users: Iterable[str]) -> None:
    """These users' reward keys, into a Redis that holds none (one round trip)."""
    pipe = client.pipeline(transaction=False)
    for user_id in users:
        u = fold.users[user_id]
        k = RewardKeys.of(user_id)
        pipe.sadd(USERS, user_id)
        if u.grants:
            pipe.hset(k.grants, mapping={key: "[" + ",".join(encode(r).decode() for r in records) + "]"
                                         for key, records in u.grants.items()})
        _hset(pipe, k.counts, {rule: str(n) for rule, n in u.counts.items()})
        _hset(pipe, k.items, {i: encode_item(item) for i, item in u.items.items()})
        _hset(pipe, k.status, u.status)
        _hset(pipe, k.remaining, {lot: str(n) for lot, n in u.remaining.items()})
        if u.expiry:
            pipe.zadd(k.expiry, {lot: float(score) for lot, score in u.expiry.items()})
        if u.ledger:
            pipe.rpush(k.ledger, *u.ledger)
        _hset(pipe, k.referral, u.referral)
        _hset(pipe, k.dedupe, dict.fromkeys(u.dedupe, "1"))
        _hset(pipe, k.redemptions, u.redemptions)
        _hset(pipe, k.account, u.account)
        due = u.next_expiry()
        if due is not None:
            pipe.zadd(EXPIRY_INDEX, {user_id: due})
    pipe.execute()


def write_campaigns(client: Redis, fold: LedgerFold) -> None:
    pipe = client.pipeline(transaction=False)
    for campaign_id, c in fold.campaigns.items():
        keys = CampaignKeys.of(campaign_id)
        head = {"spent": str(c.spent)}
        for prize_id, issued in c.issued.items():
            prize = fold.config.prizes.get(prize_id)
            if not isinstance(prize, catalogue.UniversalCode):
                continue  # no longer configured: nothing will draw from its pool
            head[f"minted:{prize_id}"] = str(prize.count)
            left = [code for code in pool_codes(prize.code, prize.count) if code not in issued]
            for start in range(0, len(left), 1000):
                pipe.sadd(keys.pool(prize_id), *left[start:start + 1000])
        pipe.hset(keys.hash, mapping=head)
        _hset(pipe, keys.reservations, c.reservations)
        _hset(pipe, keys.stock, {pid: str(n) for pid, n in c.stock.items()})
    pipe.execute()


def _hset(pipe: Pipeline, key: str, mapping: dict[str, str]) -> None:
    if mapping:
        pipe.hset(key, mapping=mapping)
