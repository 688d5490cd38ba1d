"""A user's wallet as of a time, and the pure decisions taken on it (which
points lots a spend takes). Works on what the ledger read from Redis; wallet
items are encoded for storage and decoded here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec
import orjson

from tierflow.pipeline.rewards.redeem import COUPON_TYPES
from tierflow.pipeline.state.summary import iso
from tierflow.schemas.reward_grants import RewardItem

_item = msgspec.json.Decoder(RewardItem)


def encode_item(item: RewardItem) -> str:
    """As a wallet item is stored (immutable once issued)."""
    return msgspec.json.encode(item).decode()


class RewardError(ValueError):
    """A wallet operation the user asked for cannot be done (not enough points, ...)."""


@dataclass(frozen=True, slots=True)
class RawWallet:
    """A user's reward keys as stored (strings decoded by the caller)."""

    items: dict[str, str]
    status: dict[str, str]
    remaining: dict[str, str]
    redemptions: dict[str, str]
    account: dict[str, str]

    def item(self, item_id: str) -> RewardItem | None:
        stored = self.items.get(item_id)
        return None if stored is None else _item.decode(stored)


def items_of(raw: RawWallet) -> list[RewardItem]:
    return sorted((_item.decode(v) for v in raw.items.values()), key=lambda i: (i.granted_ms, i.item_id))


def lots(raw: RawWallet) -> list[tuple[RewardItem, int]]:
    """Every points lot with the points left in it."""
    return [(i, int(raw.remaining.get(i.item_id, "0"))) for i in items_of(raw) if i.type == "points"]


def coupon_state(item: RewardItem, status: str, now_ms: int) -> str:
    """active | redeemed | cancelled | expired | not_yet_valid."""
    assert item.terms is not None
    if status != "active":
        return status
    if now_ms >= item.terms.valid_until_ms:
        return "expired"
    return "not_yet_valid" if now_ms < item.terms.valid_from_ms else "active"


def describe(item: RewardItem) -> str:
    """Human wording of a coupon: "20.00 off 100.00 (category snacks)"."""
    t = item.terms
    assert t is not None
    if t.discount == "shipping":
        text = f"free shipping up to {t.off_cents / 100:.2f}"
    elif t.discount == "percent":
        text = f"{t.percent_off}% off, at most {t.off_cents / 100:.2f}"
        if t.threshold_cents:
            text += f", from {t.threshold_cents / 100:.2f}"
    elif t.threshold_cents:
        text = f"{t.off_cents / 100:.2f} off {t.threshold_cents / 100:.2f}"
    else:
        text = f"{t.off_cents / 100:.2f} off, no threshold"
    if t.scope != "all":
        text += f" ({t.scope} {', '.join(t.scope_values)})"
    return text + (f", {t.merchant} only" if t.issuer == "merchant" else ", any shop")


@dataclass
class Balances:
    points: int = 0
    points_expired_unswept: int = 0
    pending_cents: int = 0
    matured_cents: int = 0
    withdrawn_cents: int = 0

    @property
    def available_cents(self) -> int:
        return self.matured_cents - self.withdrawn_cents


def balances(raw: RawWallet, items: Iterable[RewardItem], now_ms: int) -> Balances:
    b = Balances(withdrawn_cents=int(raw.account.get("withdrawn", "0")))
    for item in items:
        if item.type == "points":
            left = int(raw.remaining.get(item.item_id, "0"))
            if item.expires_ms is not None and item.expires_ms <= now_ms:
                b.points_expired_unswept += left
            else:
                b.points += left
        elif item.type == "cash_envelope":
            assert item.available_ms is not None
            if item.available_ms <= now_ms:
                b.matured_cents += item.value_cents
            else:
                b.pending_cents += item.value_cents
    return b


def wallet_view(user_id: str, raw: RawWallet, now_ms: int, withdraw_min_cents: int) -> dict[str, object]:
    items = items_of(raw)
    b = balances(raw, items, now_ms)
    coupons, lots, envelopes, goods = [], [], [], []
    for item in items:
        status = raw.status.get(item.item_id, "active")
        base = {"item_id": item.item_id, "type": item.type, "prize": item.prize, "campaign": item.campaign,
                "granted_at": iso(item.granted_ms)}
        if item.type in COUPON_TYPES and item.terms is not None:
            doc = {**base, "status": coupon_state(item, status, now_ms), "value_cents": item.value_cents,
                   "terms": describe(item), "code": item.code, "step": item.step,
                   "valid_from": iso(item.terms.valid_from_ms), "valid_until": iso(item.terms.valid_until_ms)}
            if item.item_id in raw.redemptions:
                doc["redemption"] = orjson.loads(raw.redemptions[item.item_id])
            coupons.append(doc)
        elif item.type == "points":
            left = int(raw.remaining.get(item.item_id, "0"))
            expired = item.expires_ms is not None and item.expires_ms <= now_ms
            if left:
                lots.append({**base, "points": item.points, "remaining": left,
                             "expires_at": iso(item.expires_ms) if item.expires_ms is not None else None,
                             "status": "expired" if expired else "active"})
        elif item.type == "cash_envelope":
            assert item.available_ms is not None
            envelopes.append({**base, "amount_cents": item.value_cents, "available_at": iso(item.available_ms),
                              "status": "available" if item.available_ms <= now_ms else "pending"})
        else:
            assert item.fulfilment is not None
            f = item.fulfilment
            goods.append({**base, "status": status, "sku": f.sku, "partner": f.partner, "right": f.right,
                          "address": raw.account.get("address") if item.type == "physical" else None})
    upcoming = [lot for lot in lots if lot["status"] == "active" and lot["expires_at"]]
    return {
        "user_id": user_id,
        "as_of": iso(now_ms),
        "coupons": coupons,
        "points": {"balance": b.points, "lots": lots,
                   "next_expiry": min((lot["expires_at"] for lot in upcoming), default=None)},
        "envelopes": {"pending_cents": b.pending_cents, "available_cents": b.available_cents,
                      "withdrawn_cents": b.withdrawn_cents,
                      "withdrawable": b.available_cents >= withdraw_min_cents and b.available_cents > 0,
                      "items": envelopes},
        "goods": goods,
    }


@dataclass(frozen=True, slots=True)
class LotChange:
    item: RewardItem
    before: int
    after: int


def plan_consume(lots: Sequence[tuple[RewardItem, int]], points: int, now_ms: int) -> list[LotChange]:
    """Take points from the lots that expire soonest (never-expiring last). Pure."""
    usable = sorted(
        ((item, left) for item, left in lots
         if left > 0 and (item.expires_ms is None or item.expires_ms > now_ms)),
        key=lambda pair: (pair[0].expires_ms is None, pair[0].expires_ms or 0, pair[0].item_id),
    )
    if sum(left for _, left in usable) < points:
        raise RewardError(f"not enough points: {sum(left for _, left in usable)} available, {points} asked")
    changes, wanted = [], points
    for item, left in usable:
        if wanted == 0:
            break
        take = min(left, wanted)
        changes.append(LotChange(item, left, left - take))
        wanted -= take
    return changes
