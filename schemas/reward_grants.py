"""Records on the `reward.grants` topic: one per grant, cancellation, redemption,
rejected redemption, points expiry/spend/adjustment, withdrawal and fulfilment
update. schemas/reward.grants.json is generated from these types
(`python -m tierflow.schemas`).

`record_id` is stable for a given effect, so a consumer that sees a record
twice (the outbox is delivered at least once) drops the second copy.

Forward compatibility: the types do not forbid unknown fields, so every consumer
(the archive, the rewards engine reading its own ledger) ignores a field a newer
producer adds; the JSON Schema states the same with `additionalProperties: true`.
"""

from __future__ import annotations

from typing import Annotated, Literal

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
    "points_spend", "points_adjust", "withdrawal", "fulfilment", "assignment", "redemption_returned",
]
Discount = Literal["reduction", "percent", "shipping"]
Scope = Literal["all", "sku", "brand", "category"]
Issuer = Literal["merchant", "platform"]
FulfilmentStatus = Literal["awaiting_address", "ready", "pending_partner"]

Text = Annotated[str, msgspec.Meta(min_length=1)]
Cents = Annotated[int, msgspec.Meta(ge=0)]
EpochMs = Annotated[int, msgspec.Meta(ge=0)]


class CouponTerms(msgspec.Struct, frozen=True):
    """What an issued coupon promises, frozen at grant time: a configuration change
    never alters a coupon a user already holds."""

    discount: Discount
    off_cents: Annotated[Cents, msgspec.Meta(
        description="reduction: amount off; percent: the cap on the discount; shipping: the face value."
    )]
    percent_off: Annotated[int, msgspec.Meta(
        ge=0, le=99, description="percent only: e.g. 5 means 5 % off the in-scope amount."
    )]
    threshold_cents: Annotated[Cents, msgspec.Meta(description="Minimum in-scope spend; 0 = no threshold.")]
    scope: Scope
    scope_values: list[str]
    issuer: Issuer
    merchant: Annotated[str | None, msgspec.Meta(
        description="The shop a merchant coupon is valid at; null for platform coupons."
    )]
    valid_from_ms: Annotated[EpochMs, msgspec.Meta(description="Epoch milliseconds, inclusive.")]
    valid_until_ms: Annotated[EpochMs, msgspec.Meta(description="Epoch milliseconds, exclusive.")]


class Fulfilment(msgspec.Struct, frozen=True):
    """What a partner or the warehouse must deliver for a physical or third-party prize."""

    status: FulfilmentStatus
    sku: str | None = None
    partner: str | None = None
    right: str | None = None
    address: str | None = None


class RewardItem(msgspec.Struct, frozen=True):
    """One thing in a user's wallet, as issued. Never mutated once issued: its lifecycle
    (redeemed, cancelled, remaining points) is kept beside it."""

    item_id: Annotated[Text, msgspec.Meta(
        description="Coupon id (what purchases name in `coupons`), points lot, envelope or fulfilment id."
    )]
    type: ItemType
    prize: Annotated[str, msgspec.Meta(description="Prize id in the rewards configuration.")]
    campaign: Annotated[str | None, msgspec.Meta(description="null for manual points adjustments.")]
    rule: str | None
    value_cents: Annotated[Cents, msgspec.Meta(
        description="Face value (coupons), money value (points, envelopes) or unit cost (goods, rights)."
    )]
    granted_ms: EpochMs
    code: Annotated[str | None, msgspec.Meta(description="The public universal code this coupon came from.")] = None
    terms: Annotated[CouponTerms | None, msgspec.Meta(description="Coupons of every kind.")] = None
    step: Annotated[Annotated[int, msgspec.Meta(ge=1)] | None, msgspec.Meta(
        description="Referral coupons: the step reached (1-based)."
    )] = None
    points: Annotated[int, msgspec.Meta(ge=1)] | None = None
    expires_ms: Annotated[EpochMs | None, msgspec.Meta(description="Points lot expiry; null = never.")] = None
    available_ms: Annotated[EpochMs | None, msgspec.Meta(description="Cash envelope usable from.")] = None
    fulfilment: Annotated[Fulfilment | None, msgspec.Meta(description="Physical goods and third-party rights.")] = None


class RewardRecord(msgspec.Struct, frozen=True):
    """Value of a record on topic reward.grants (key: the user id): a grant, cancellation,
    redemption, rejected redemption, points expiry/spend/adjustment, cash withdrawal or
    fulfilment update, or a customer's arm in a campaign with a control group (assignment:
    reason "treated" or "control", at the trigger that first put them in it). Delivered at least
    once: drop duplicates by record_id. Consumers ignore fields they do not know."""

    record_id: Annotated[Text, msgspec.Meta(description="Stable id of this effect; the deduplication key.")]
    kind: RecordKind
    user_id: Text
    at_ms: Annotated[EpochMs, msgspec.Meta(description=(
        "The time the decision used: the trigger's event time for grants and redemptions, the (injectable)"
        " engine clock for claims, expiries and withdrawals."
    ))]
    recorded_ms: Annotated[EpochMs, msgspec.Meta(description="The engine's clock when it wrote the record.")]
    items: list[RewardItem]
    cost_cents: Annotated[Cents, msgspec.Meta(
        description="Budget this record charged to its campaign (grants and referral step-ups; else 0)."
    )] = 0
    campaign: str | None = None
    rule: str | None = None
    prize: str | None = None
    prize_type: PrizeType | None = None
    trigger: Annotated[str | None, msgspec.Meta(
        description="What fired the rule: tier:<dimension>:v<version>, event:<event_id>, code:<CODE> or step:<n>."
    )] = None
    idempotency_key: Annotated[str | None, msgspec.Meta(
        description="JSON array [rule, user, trigger]: a grant happens at most once per key."
    )] = None
    order_id: str | None = None
    order_cents: Cents | None = None
    discount_cents: Cents | None = None
    points_delta: int | None = None
    amount_cents: Cents | None = None
    reason: str | None = None
    replaced_by: Annotated[str | None, msgspec.Meta(
        description="Cancellations: the item issued in place of the cancelled one."
    )] = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RewardRecord)


def encode(record: RewardRecord) -> bytes:
    return _encoder.encode(record)


def decode(raw: bytes | str) -> RewardRecord:
    return _decoder.decode(raw)
