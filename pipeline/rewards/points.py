"""Points after they are granted: the expiry sweep (a bounded slice of users per
call), spending (soonest-expiring lots first), manual adjustments and the clawback
of the points a refunded order earned. Each change
is decided on the wallet as read and committed with compare-and-set, once per
reference, with its points-ledger lines and its reward.grants record in the same
write."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Literal

import msgspec

from tierflow.pipeline.rewards import catalogue, redemption, rules
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.ledger import Ledger, Update, dedupe_key, expiry_score, points_entry
from tierflow.pipeline.rewards.ledger import RewardKeys as K
from tierflow.pipeline.rewards.wallet import RawWallet, RewardError, encode_item, lots, plan_consume
from tierflow.pipeline.state.summary import OrderStatus, UserKeys, order_key
from tierflow.schemas.events import Event, Purchase
from tierflow.schemas.reward_grants import RewardItem, RewardRecord, encode


def expire_points(ledger: Ledger, now_ms: int, max_users: int) -> list[RewardRecord]:
    """Expire every points lot due by now_ms, for up to max_users users; the expiry records.
    A bounded slice in a fixed number of round trips. A lot changed meanwhile (spent) is
    left for the next sweep."""
    users = ledger.due_expiries(now_ms, max_users)
    if not users:
        return []
    wallets = ledger.read_all(users)
    planned = [(user, *expiry) for user in users for expiry in expiries(user, wallets[user], now_ms)]
    results = ledger.update_all([(user, dedupe, update) for user, dedupe, update, _ in planned]) if planned else []
    ledger.reindex_expiries(users)
    return [record for (*_, record), result in zip(planned, results, strict=True) if result == 1]


def expiries(user_id: str, raw: RawWallet, now_ms: int) -> list[tuple[str, Update, RewardRecord]]:
    """(dedupe key, write, record) for each of the user's lots due by now_ms with points left. Pure."""
    due = []
    for item, left in lots(raw):
        if not left or item.expires_ms is None or item.expires_ms > now_ms:
            continue
        record = RewardRecord(
            record_id=f"expiry:{item.item_id}", kind="expiry", user_id=user_id, at_ms=item.expires_ms,
            recorded_ms=now_ms, items=[item], campaign=item.campaign, rule=item.rule, prize=item.prize,
            prize_type="points", points_delta=-left, reason="points_expired")
        update = Update(
            checks=[[K.REMAINING, item.item_id, str(left)]],
            hset=[[K.REMAINING, item.item_id, "0"]], zrem=[[K.EXPIRY, item.item_id]],
            push=[[K.LEDGER, points_entry("expire", item.item_id, -left, item.expires_ms, record.record_id)],
                  [K.OUTBOX, encode(record).decode()]])
        due.append((dedupe_key("expire", item.item_id), update, record))
    return due


def spend_points(ledger: Ledger, user_id: str, amount: int, ref: str, now_ms: int) -> RewardRecord | None:
    """Spend `amount` points (cash offset, redemption): soonest-expiring lots first. Once per
    `ref` (e.g. the order id): a repeat returns None. Raises RewardError if the balance is short."""
    return _take(ledger, user_id, amount, ref, now_ms, "points_spend")


def adjust_points(ledger: Ledger, config: RewardsConfig, user_id: str, delta: int, ref: str, now_ms: int,
                  reason: str, expires_days: int | None = None) -> RewardRecord | None:
    """A manual correction, once per `ref`: positive adds a lot (expiring after
    expires_days, or never), negative takes points like a spend."""
    if delta < 0:
        return _take(ledger, user_id, -delta, ref, now_ms, "points_adjust", reason)
    if delta == 0:
        raise RewardError("an adjustment needs a non-zero delta")
    expires = now_ms + expires_days * catalogue.DAY_MS if expires_days is not None else None
    key = dedupe_key("adjust", ref)
    item = RewardItem(catalogue.item_id("P", key, 0), "points", prize="adjustment", campaign=None, rule=None,
                      value_cents=delta * config.point_value_cents, granted_ms=now_ms, points=delta,
                      expires_ms=expires)
    record = RewardRecord(record_id=f"points_adjust:{ref}", kind="points_adjust", user_id=user_id,
                          at_ms=now_ms, recorded_ms=now_ms, items=[item], prize_type="points",
                          points_delta=delta, reason=reason)
    update = Update(
        checks=[[K.ITEMS, item.item_id, None]],
        hset=[[K.ITEMS, item.item_id, encode_item(item)], [K.STATUS, item.item_id, "active"],
              [K.REMAINING, item.item_id, str(delta)]],
        zadd=[[K.EXPIRY, expiry_score(expires), item.item_id]],
        push=[[K.LEDGER, points_entry("adjust", item.item_id, delta, now_ms, ref, expires)],
              [K.OUTBOX, encode(record).decode()]])
    return record if ledger.commit(user_id, key, lambda _raw: update, expires) else None


def _take(ledger: Ledger, user_id: str, points: int, ref: str, now_ms: int,
          kind: Literal["points_spend", "points_adjust"], reason: str | None = None) -> RewardRecord | None:
    """Take points from the live lots, soonest-expiring first (a spend or a negative adjustment)."""
    if points <= 0:
        raise RewardError("points to take must be positive")
    op = "spend" if kind == "points_spend" else "adjust"
    record = RewardRecord(record_id=f"{kind}:{ref}", kind=kind, user_id=user_id, at_ms=now_ms,
                          recorded_ms=now_ms, items=[], prize_type="points", points_delta=-points,
                          reason=reason or ref)
    taken: list[RewardRecord] = []

    def decide(raw: RawWallet) -> Update:
        changes = plan_consume(lots(raw), points, now_ms)
        taken[:] = [msgspec.structs.replace(record, items=[c.item for c in changes])]
        return Update(
            checks=[[K.REMAINING, c.item.item_id, str(c.before)] for c in changes],
            hset=[[K.REMAINING, c.item.item_id, str(c.after)] for c in changes],
            zrem=[[K.EXPIRY, c.item.item_id] for c in changes if c.after == 0],
            push=[*([K.LEDGER, points_entry(op, c.item.item_id, c.after - c.before, now_ms, ref)] for c in changes),
                  [K.OUTBOX, encode(taken[0]).decode()]])

    return taken[0] if ledger.commit(user_id, dedupe_key(op, ref), decide) else None


# Account fields tying an order to its points: the lots its purchase's rules grant (ids are
# deterministic), and the points already clawed back (or forgiven).
_ORDER_LOTS = "o:"
_ORDER_CLAWED = "c:"
Order = tuple[str, str]  # user id, order id


def earned_lots(config: RewardsConfig, event_rules: rules.EventRules, events: Sequence[tuple[Event, int]],
                first_purchase: Mapping[str, int]) -> dict[Order, list[str]]:
    """The points lots each purchase's rules grant, by (user, order). Pure."""
    out: dict[Order, list[str]] = {}
    for event, ts_ms in events:
        if type(event) is not Purchase:
            continue
        for intent in rules.match_event(config, event, ts_ms, first_purchase.get(event.user_id), event_rules):
            components = catalogue.flatten(intent.prize_id, config.prizes)
            out.setdefault((event.user_id, event.order_id), []).extend(
                catalogue.item_id("P", intent.idempotency_key, index)
                for index, component in enumerate(components) if isinstance(component.prize, catalogue.Points))
    return {order: lots for order, lots in out.items() if lots}


def clawback_ref(order_id: str, refunded_cents: int) -> str:
    """The adjustment a refunded amount of an order makes: once each (a `points_adjust`
    record, folded back by `tierflow rebuild` like any negative adjustment)."""
    return f"clawback:{order_id}:{refunded_cents}"


def clawback(user_id: str, order_id: str, order: OrderStatus, raw: RawWallet,
             now_ms: int) -> tuple[Update, RewardRecord] | None:
    """The points an order earned, taken back in proportion to the money refunded on it (all
    of them for a full refund): from the order's own lots first, then the soonest-expiring.
    Points already spent are not taken twice: the clawback is capped at the balance, and the
    shortfall is forgiven (the record says what was taken, possibly 0). None when nothing
    is due. Pure."""
    own = [item for lot in raw.account.get(_ORDER_LOTS + order_id, "").split(",")
           if (item := raw.item(lot)) is not None and item.points]
    earned = sum(item.points or 0 for item in own)
    target = earned if order.full else earned * order.refunded_cents // max(order.cents, 1)
    clawed = raw.account.get(_ORDER_CLAWED + order_id)
    due = target - int(clawed or "0")
    if due <= 0:
        return None
    usable = [(item, n) for item, n in lots(raw) if n > 0 and (item.expires_ms is None or item.expires_ms > now_ms)]
    own_ids = {item.item_id for item in own}
    first = [(item, n) for item, n in usable if item.item_id in own_ids]
    rest = [(item, n) for item, n in usable if item.item_id not in own_ids]
    from_own = min(due, sum(n for _, n in first))
    from_rest = min(due - from_own, sum(n for _, n in rest))
    changes = plan_consume(first, from_own, now_ms) + plan_consume(rest, from_rest, now_ms)
    ref = clawback_ref(order_id, order.refunded_cents)
    record = RewardRecord(
        record_id=f"points_adjust:{ref}", kind="points_adjust", user_id=user_id, at_ms=now_ms, recorded_ms=now_ms,
        items=[c.item for c in changes], prize_type="points", points_delta=-(from_own + from_rest),
        order_id=order_id, reason="refund")
    update = Update(
        checks=[[K.ACCOUNT, _ORDER_CLAWED + order_id, clawed],
                *([K.REMAINING, c.item.item_id, str(c.before)] for c in changes)],
        hset=[[K.ACCOUNT, _ORDER_CLAWED + order_id, str(target)],
              *([K.REMAINING, c.item.item_id, str(c.after)] for c in changes)],
        zrem=[[K.EXPIRY, c.item.item_id] for c in changes if c.after == 0],
        push=[*([K.LEDGER, points_entry("adjust", c.item.item_id, c.after - c.before, now_ms, ref)]
                for c in changes),
              [K.OUTBOX, encode(record).decode()]])
    return update, record


def claw_back(ledger: Ledger, earned: Mapping[Order, list[str]], refunded: Collection[Order],
              now_ms: int) -> list[RewardRecord]:
    """After the state applied a batch and its grants were made: remember the points lots each
    purchase earned (`earned_lots`: a replay writes the same), then take back the points of
    the orders whose refunds call for it (refunded: orders named by the batch's refunds; a
    purchase whose refund came first is among `earned`). An order refunded in full also gets
    its redeemed coupons back (redemption.give_back_all). One round trip, plus a few per order
    with refunds; each refunded amount once, whatever is replayed."""
    orders = list(dict.fromkeys([*earned, *refunded]))
    pipe = ledger.client.pipeline(transaction=False)
    for (user, order_id), lot_ids in earned.items():
        pipe.hset(K.of(user).account, _ORDER_LOTS + order_id, ",".join(lot_ids))
    for user, order_id in orders:
        pipe.hget(UserKeys.of(user).orders, order_key(order_id))
    statuses = [OrderStatus.parse(entry) for entry in pipe.execute()[len(earned):]]
    records: list[RewardRecord] = []
    for (user, order_id), status in zip(orders, statuses, strict=True):
        if status is None or not status.refunds:
            continue
        taken = _claw_back_one(ledger, user, order_id, status, now_ms)
        records += [taken] if taken is not None else []
        if status.full:
            records += redemption.give_back_all(ledger, user, order_id, now_ms)
    return records


def _claw_back_one(ledger: Ledger, user: str, order_id: str, status: OrderStatus, now_ms: int) -> RewardRecord | None:
    decided: list[RewardRecord] = []

    def decide(raw: RawWallet) -> Update:
        planned = clawback(user, order_id, status, raw, now_ms)
        decided[:] = [planned[1]] if planned else []
        return planned[0] if planned else Update()

    committed = ledger.commit(user, dedupe_key("adjust", clawback_ref(order_id, status.refunded_cents)), decide)
    return decided[0] if committed and decided else None
