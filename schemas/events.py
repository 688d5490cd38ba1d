"""Python records for the input topics. They mirror the JSON Schema files beside
this module (tests/test_schemas.py proves the two agree).

msgspec validates while converting, which keeps ingest fast; the JSON Schema
files are the contract producers in other languages validate against.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import msgspec

# RFC 3339 with an explicit offset (Z or +hh:mm); epoch milliseconds are the alternative.
RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Timestamp = Annotated[str, msgspec.Meta(pattern=RFC3339)] | Annotated[int, msgspec.Meta(ge=0)]
Money = Annotated[float, msgspec.Meta(ge=0)]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]

InteractionKind = Literal[
    "favorite",
    "like",
    "share",
    "follow",
    "coupon_claim",
    "campaign_join",
    "referral_invite",
    "referral_accept",
    "sign_in",
    "content_read",
    "comment",
    "review",
]
INTERACTION_KINDS: tuple[str, ...] = get_args(InteractionKind)


class Item(msgspec.Struct, frozen=True):
    sku: Id
    category: Name
    qty: Quantity
    price: Money
    brand: Name | None = None


class _Event(msgspec.Struct, frozen=True, tag_field="type"):
    event_id: Id
    user_id: Id
    ts: Timestamp
    channel: Name


class Purchase(_Event, frozen=True, tag="purchase"):
    order_id: Id
    amount: Money
    currency: Currency
    items: Annotated[list[Item], msgspec.Meta(min_length=1, max_length=500)]
    coupons: list[Id] = []


class Cart(_Event, frozen=True, tag="cart"):
    action: Literal["add", "remove"]
    sku: Id
    category: Name
    qty: Quantity
    price: Money


class Browse(_Event, frozen=True, tag="browse"):
    page: Name | None = None
    sku: Id | None = None
    category: Name | None = None
    source: Name | None = None


class Interaction(_Event, frozen=True, tag="interaction"):
    kind: InteractionKind
    target: Id | None = None


Event = Purchase | Cart | Browse | Interaction
EVENT_TYPES: dict[str, type[_Event]] = {
    "purchase": Purchase,
    "cart": Cart,
    "browse": Browse,
    "interaction": Interaction,
}
