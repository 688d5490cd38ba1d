"""Kafka records -> archive table rows. Pure functions, no I/O.

Touch events arrive already validated (tierflow.pipeline.ingest.validate.parse_record).
Tier changes and reward records are decoded with their contract types
(tierflow.schemas.tier_changes.TierChange, tierflow.schemas.reward_grants.RewardRecord);
those ignore fields they do not know, so producers can add fields without breaking
the archive (reward records are also kept verbatim in the `payload` column).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from tierflow.pipeline.ingest.validate import ValidEvent, parse_ts
from tierflow.pipeline.state.summary import cents
from tierflow.schemas.events import Browse, Cart, Interaction, Purchase, Refund
from tierflow.schemas.reward_grants import RewardRecord
from tierflow.schemas.tier_changes import TierChange

TOUCH_COLUMNS = (
    "event_id", "user_id", "type", "ts", "channel", "categories", "action", "sku", "page",
    "source", "target", "qty", "price_cents", "order_id", "amount_cents", "currency", "coupons",
    "items.sku", "items.category", "items.brand", "items.qty", "items.price_cents",
    "kafka_topic", "kafka_partition", "kafka_offset",
)
TIER_COLUMNS = (
    "user_id", "dimension", "old", "new", "reason", "version", "seq", "event_time", "scores",
    "points", "repurchases", "kafka_topic", "kafka_partition", "kafka_offset",
)
GRANT_COLUMNS = (
    "record_id", "kind", "user_id", "at", "recorded_at", "campaign", "rule", "prize", "prize_type",
    "trigger", "cost_cents", "points_delta", "amount_cents", "order_id", "order_cents",
    "discount_cents", "item_ids", "item_types", "item_values_cents", "payload",
    "kafka_topic", "kafka_partition", "kafka_offset",
)

Row = tuple[Any, ...]
Source = tuple[str, int, int]  # topic, partition, offset

# Every time column is DateTime64(3, 'UTC') (infra/clickhouse/*.sql): rows carry epoch
# milliseconds, which the client writes as the column's ticks as they are, exact and
# without a datetime per value.


class RecordError(ValueError):
    """A tier-change or reward record the archive cannot store."""


def touch_row(item: ValidEvent, source: Source) -> Row:
    event = item.event
    categories: list[str] = []
    action = sku = page = origin = target = order_id = currency = ""
    qty = price = amount = 0
    coupons: list[str] = []
    lines: tuple[list[str], list[str], list[str], list[int], list[int]] = ([], [], [], [], [])
    if isinstance(event, Purchase | Refund):
        # A refund names its order, the money returned, the lines returned and why (in action);
        # it names no category, so the AIPL category breakdown is the purchases'.
        order_id, amount, currency = event.order_id, cents(event.amount), event.currency
        if isinstance(event, Purchase):
            categories = sorted({line.category for line in event.items})
            coupons = event.coupons
        else:
            action = event.reason or ""
        for line in event.items or []:
            lines[0].append(line.sku)
            lines[1].append(line.category)
            lines[2].append(line.brand or "")
            lines[3].append(line.qty)
            lines[4].append(cents(line.price))
    elif isinstance(event, Cart):
        categories = [event.category]
        action, sku, qty, price = event.action, event.sku, event.qty, cents(event.price)
    elif isinstance(event, Browse):
        categories = [event.category] if event.category else []
        sku, page, origin = event.sku or "", event.page or "", event.source or ""
    elif isinstance(event, Interaction):
        action, target = event.kind, event.target or ""
    kind = type(event).__name__.lower()
    return (
        event.event_id, event.user_id, kind, item.ts_ms, event.channel, categories, action,
        sku, page, origin, target, qty, price, order_id, amount, currency, list(coupons),
        *lines, *source,
    )


T = TypeVar("T")

_TIER_CHANGE = msgspec.json.Decoder(TierChange)
_REWARD_RECORD = msgspec.json.Decoder(RewardRecord)


def _decode(value: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    try:
        return decoder.decode(value)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise RecordError(str(exc)) from exc


def _time(value: str) -> int:
    try:
        return parse_ts(value)
    except (ValueError, OverflowError) as exc:
        raise RecordError(f"unparseable event_time {value!r}") from exc


def tier_row(value: bytes | None, source: Source) -> Row:
    if value is None:
        raise RecordError("record has no value")
    rec = _decode(value, _TIER_CHANGE)
    return (
        rec.user_id, rec.dimension, rec.old, rec.new, rec.reason, rec.version, rec.seq,
        _time(rec.event_time), msgspec.json.encode(rec.scores).decode(), rec.points, rec.repurchases,
        *source,
    )


def points_moved(rec: RewardRecord) -> int:
    """Points the record adds or takes away. Grants state them in the points lots they
    issue (points_delta is for expiries, spends and adjustments)."""
    if rec.points_delta is not None:
        return rec.points_delta
    if rec.kind == "grant":
        return sum(item.points or 0 for item in rec.items if item.type == "points")
    return 0


def grant_row(value: bytes | None, source: Source) -> Row:
    if value is None:
        raise RecordError("record has no value")
    rec = _decode(value, _REWARD_RECORD)
    return (
        rec.record_id, rec.kind, rec.user_id, rec.at_ms, rec.recorded_ms,
        rec.campaign or "", rec.rule or "", rec.prize or "", rec.prize_type or "",
        rec.trigger or "", rec.cost_cents, points_moved(rec), rec.amount_cents or 0,
        rec.order_id or "", rec.order_cents or 0, rec.discount_cents or 0,
        [i.item_id for i in rec.items], [i.type for i in rec.items],
        [i.value_cents for i in rec.items], value.decode("utf-8", errors="replace"), *source,
    )
