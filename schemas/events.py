"""The input records: one event per topic (touch.purchase, touch.cart, touch.browse,
touch.interaction; a refund travels on touch.purchase with its order) and the batch
record `{"events": [...]}` any of them may carry.

msgspec validates while converting, which keeps ingest fast; the JSON Schema files
beside this module are generated from these types (`python -m tierflow.schemas`)
for producers in other languages. Consumers ignore fields they do not know, so
producers may add fields.

The bounds an operator sets (string lengths, items and coupons per order, money,
quantities, nesting) are not part of the types: they are the `[ingest]` settings,
checked by tierflow.pipeline.ingest.validate, and the descriptions name them.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

# RFC 3339 with an explicit offset (Z or +hh:mm); epoch milliseconds are the alternative.
RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"

Id = Annotated[str, msgspec.Meta(min_length=1, description="At most ingest.max_id_length characters.")]
Name = Annotated[str, msgspec.Meta(min_length=1, description="At most ingest.max_name_length characters.")]
Timestamp = Annotated[str, msgspec.Meta(pattern=RFC3339)] | Annotated[int, msgspec.Meta(ge=0)]
Money = Annotated[float, msgspec.Meta(ge=0)]
Price = Annotated[Money, msgspec.Meta(description="Unit price, at most ingest.max_price.")]
Quantity = Annotated[int, msgspec.Meta(ge=1, description="At most ingest.max_quantity.")]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 code.")]

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


class Item(msgspec.Struct, frozen=True):
    """One order line."""

    sku: Id
    category: Name
    qty: Quantity
    price: Annotated[Price, msgspec.Meta(
        description="Unit price, at most ingest.max_price; qty x price is at most ingest.max_amount."
    )]
    brand: Name | None = None


class _Event(msgspec.Struct, frozen=True, tag_field="type"):
    event_id: Annotated[Id, msgspec.Meta(description=(
        "Unique id of this event; the idempotency key (duplicates are applied once, the same id with other"
        " content is dead-lettered as conflicting_duplicate). At most ingest.max_id_length characters."
    ))]
    user_id: Annotated[Id, msgspec.Meta(
        description="The customer; also the Kafka record key. At most ingest.max_id_length characters."
    )]
    ts: Annotated[Timestamp, msgspec.Meta(description="Event time: RFC 3339 with an offset, or epoch milliseconds.")]
    channel: Annotated[Name, msgspec.Meta(description=(
        "Touchpoint channel: app, mini_program, web, store, marketplace, chat, ..."
        " At most ingest.max_name_length characters."
    ))]


class Purchase(_Event, frozen=True, tag="purchase"):
    """Value of a record on topic touch.purchase: one event, or a batch {"events": [...]}
    of one user's events (see batch.json)."""

    order_id: Id
    amount: Annotated[Money, msgspec.Meta(description="Order total; must be >= 0 and at most ingest.max_amount.")]
    currency: Currency
    items: Annotated[list[Item], msgspec.Meta(min_length=1, description="At most ingest.max_items lines.")]
    coupons: Annotated[list[Id], msgspec.Meta(
        description="Ids of coupons redeemed on this order, at most ingest.max_coupons."
    )] = []


class Refund(_Event, frozen=True, tag="refund"):
    """Value of a record on topic touch.purchase, beside its order so the two stay in order:
    money returned on an order (a return or a cancellation), one event or inside a batch
    {"events": [...]} (see batch.json). It lowers the order's amount in the order's day; a
    fully refunded order no longer counts as a purchase. Refunds on one order beyond its
    amount are dead-lettered as refund_exceeds_order."""

    order_id: Annotated[Id, msgspec.Meta(description=(
        "The refunded order's order_id; the order may arrive after its refund."
        " At most ingest.max_id_length characters."
    ))]
    amount: Annotated[Money, msgspec.Meta(description=(
        "Money returned; must be >= 0 and at most ingest.max_amount. A refund of the whole order amount"
        " (with the order's other refunds) is a full refund."
    ))]
    currency: Currency
    items: Annotated[list[Item] | None, msgspec.Meta(description=(
        "The returned lines, for information (at most ingest.max_items); the amount is what counts."
    ))] = None
    reason: Annotated[Name | None, msgspec.Meta(description=(
        "Why: returned, cancelled, damaged, ... At most ingest.max_name_length characters."
    ))] = None


class Cart(_Event, frozen=True, tag="cart"):
    """Value of a record on topic touch.cart: one event, or a batch {"events": [...]}
    of one user's events (see batch.json)."""

    action: Literal["add", "remove"]
    sku: Id
    category: Name
    qty: Quantity
    price: Price


class Browse(_Event, frozen=True, tag="browse"):
    """Value of a record on topic touch.browse: one event, or a batch {"events": [...]}
    of one user's events (see batch.json). At least one of page, sku or category is required."""

    page: Name | None = None
    sku: Id | None = None
    category: Name | None = None
    source: Annotated[Name | None, msgspec.Meta(
        description="Where the visit came from: search, ad, share, ... At most ingest.max_name_length characters."
    )] = None


# A rule across fields, which a type cannot state: a browse names what was browsed.
# Ingest checks it in tierflow.pipeline.ingest.validate; the JSON Schema states it so.
BROWSE_NAMES_WHAT: dict[str, object] = {
    "anyOf": [
        {"required": [field], "properties": {field: {"type": "string"}}} for field in ("page", "sku", "category")
    ]
}


class Interaction(_Event, frozen=True, tag="interaction"):
    """Value of a record on topic touch.interaction: one event, or a batch {"events": [...]}
    of one user's events (see batch.json)."""

    kind: InteractionKind
    target: Annotated[Id | None, msgspec.Meta(
        description="What was interacted with: a sku, coupon id, campaign id, invited user, ..."
        " At most ingest.max_id_length characters."
    )] = None


Event = Purchase | Refund | Cart | Browse | Interaction
EVENT_TYPES: dict[str, type[_Event]] = {
    "purchase": Purchase,
    "refund": Refund,
    "cart": Cart,
    "browse": Browse,
    "interaction": Interaction,
}

# The input topic (touch.<type>) each event type is sent to: a refund shares its order's
# topic, so with the same key (the user) it is read in order with the order.
TOPIC_OF: dict[str, str] = {**{name: name for name in EVENT_TYPES}, "refund": "purchase"}


class Batch(msgspec.Struct, frozen=True):
    """A record value carrying several events of one user (any input types), on any input
    topic. Each element must be valid against its type's schema."""

    events: Annotated[list[Event], msgspec.Meta(min_length=1)]
