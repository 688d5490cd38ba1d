"""Records on the `reward.grants` topic: one per grant, cancellation, redemption,
rejected redemption, points expiry/spend/adjustment, withdrawal and fulfilment
update. They mirror schemas/reward.grants.json (tests/test_rewards_core.py
proves the two agree).

`record_id` is stable for a given effect, so a consumer that sees a record
twice (the outbox is delivered at least once) drops the second copy.
"""

from __future__ import annotations

from typing import Literal

import msgspec

# Wallet item types: what a user can hold. A gift pack is granted as its
# components; a universal code is granted as the coupon it hands out.
ItemType = Literal[
    "coupon", "free_shipping", "referral_coupon", "points", "cash_envelope", "physical", "third_party"
]
PrizeType = Literal[
    "coupon", "free_shipping", "referral_coupon", "universal_code", "points",
    "cash_envelope", "physical", "third_party", "gift_pack",
]
RecordKind = Literal[
    "grant", "cancellation", "redemption", "redemption_rejected", "expiry",
    "points_spend", "points_adjust", "withdrawal", "fulfilment",
]
Discount = Literal["reduction", "percent", "shipping"]
Scope = Literal["all", "sku", "brand", "category"]
Issuer = Literal["merchant", "platform"]
FulfilmentStatus = Literal["awaiting_address", "ready", "pending_partner"]

PRIZE_TYPES: tuple[str, ...] = PrizeType.__args__  # type: ignore[attr-defined]
ITEM_TYPES: tuple[str, ...] = ItemType.__args__  # type: ignore[attr-defined]
RECORD_KINDS: tuple[str, ...] = RecordKind.__args__  # type: ignore[attr-defined]


class CouponTerms(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What an issued coupon promises, frozen at grant time: a configuration change
    never alters a coupon a user already holds."""

    discount: Discount
    # reduction: amount off; percent: the cap on the discount; shipping: the face value.
    off_cents: int
    # percent only: e.g. 5 means 5 % off the in-scope amount.
    percent_off: int
    # Minimum in-scope spend; 0 = no threshold.
    threshold_cents: int
    scope: Scope
    scope_values: list[str]
    issuer: Issuer
    # The shop a merchant coupon is valid at (None for platform coupons).
    merchant: str | None
    valid_from_ms: int
    valid_until_ms: int


class Fulfilment(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a partner or the warehouse must deliver for a physical or third-party prize."""

    status: FulfilmentStatus
    sku: str | None = None
    partner: str | None = None
    right: str | None = None
    address: str | None = None


class RewardItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One thing in a user's wallet. Never mutated once issued: its lifecycle
    (redeemed, cancelled, remaining points) is kept beside it."""

    item_id: str
    type: ItemType
    prize: str
    # None for manual points adjustments.
    campaign: str | None
    rule: str | None
    # Face value (coupons), money value (points, envelopes) or unit cost (goods, rights).
    value_cents: int
    granted_ms: int
    code: str | None = None  # the public universal code this coupon came from
    terms: CouponTerms | None = None  # coupons of every kind
    step: int | None = None  # referral coupons: 1-based step reached
    points: int | None = None
    expires_ms: int | None = None  # points lot expiry; None = never
    available_ms: int | None = None  # cash envelope usable from
    fulfilment: Fulfilment | None = None  # physical goods and third-party rights


class RewardRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A value on `reward.grants` (keyed by user id)."""

    record_id: str
    kind: RecordKind
    user_id: str
    # The time the decision used: the trigger's event time for grants and
    # redemptions, the (injectable) clock for claims, expiries and withdrawals.
    at_ms: int
    # The engine's clock when it wrote the record.
    recorded_ms: int
    items: list[RewardItem]
    # Budget charged by this record (grants and referral step-ups; else 0).
    cost_cents: int = 0
    campaign: str | None = None
    rule: str | None = None
    prize: str | None = None
    prize_type: PrizeType | None = None
    # What fired the rule: "tier:<dimension>:v<version>", "event:<event_id>", "code:<CODE>", "step:<n>".
    trigger: str | None = None
    idempotency_key: str | None = None
    order_id: str | None = None
    order_cents: int | None = None
    discount_cents: int | None = None
    points_delta: int | None = None
    amount_cents: int | None = None
    reason: str | None = None
    # Cancellations: the item issued in place of the cancelled one.
    replaced_by: str | None = None


Grant = RewardRecord

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RewardRecord)


def encode(record: RewardRecord) -> bytes:
    return _encoder.encode(record)


def decode(raw: bytes | str) -> RewardRecord:
    return _decoder.decode(raw)
