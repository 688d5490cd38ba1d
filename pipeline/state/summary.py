"""Per-user rolling state: how events are encoded for the Lua script, and how
the stored hashes read back as recency / frequency / monetary as of a time.

Pure functions only; `tierflow.pipeline.state.store` does the Redis I/O. Money is kept in
integer cents so sums are exact whatever the arrival order.
"""

from __future__ import annotations

import binascii
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from tierflow.pipeline import keyspace
from tierflow.pipeline.errors import TierflowError
from tierflow.schemas.events import Browse, Cart, Interaction, Purchase, Refund

DAY_MS = 86_400_000
MINUTE_MS = 60_000
# The largest total the state keeps (money in cents, quantities): Lua numbers are
# doubles, exact up to 2**53, and apply.lua refuses an event that would pass it, far
# inside the 64-bit range of Redis counters.
MAX_TOTAL = 2**53 - 1
_WEEKEND = (5, 6)  # Saturday, Sunday (datetime.weekday numbering)
_THURSDAY = 3  # 1970-01-01, day 0, was a Thursday


def cents(amount: float) -> int:
    return round(amount * 100)


def day_of(ts_ms: int) -> int:
    """UTC calendar day number (days since 1970-01-01)."""
    return ts_ms // DAY_MS


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def user_tag(user_id: str) -> str:
    """Hash tag shared by all of a user's keys, so one Lua call may touch them all on a
    cluster; in this deployment's namespace."""
    return keyspace.key("{u:" + user_id + "}")


@dataclass(frozen=True, slots=True)
class UserKeys:
    """A customer's state keys. `seen` holds the dedupe window and the offset watermarks;
    `offsets` is where earlier versions kept the watermarks (apply.lua moves them);
    `orders` the time, amount and refunds of each order in the refund window (what a refund needs)."""

    profile: str
    days: str
    categories: str
    skus: str
    channels: str
    seen: str
    offsets: str
    orders: str

    @classmethod
    def of(cls, user_id: str) -> UserKeys:
        tag = user_tag(user_id)
        return cls(
            tag, f"{tag}:d", f"{tag}:cat", f"{tag}:sku", f"{tag}:ch", f"{tag}:ev", f"{tag}:off", f"{tag}:o"
        )

    def as_list(self) -> list[str]:
        return [
            self.profile, self.days, self.categories, self.skus, self.channels, self.seen, self.offsets, self.orders
        ]


def _short_hash(data: bytes) -> str:
    """64 bits as 11 base64 characters: compact in Redis, collisions out of reach among
    one customer's events."""
    return binascii.b2a_base64(hashlib.blake2b(data, digest_size=8).digest(), newline=False)[:11].decode()


def id_key(event_id: str) -> str:
    """How apply.lua remembers an event id for the dedupe window: short whatever the id's length."""
    return _short_hash(event_id.encode())


def order_key(order_id: str) -> str:
    """How apply.lua files an order (its purchase and its refunds): 48 bits, short whatever the id's
    length, collisions out of reach among the orders of one customer's refund window."""
    return _short_hash(order_id.encode())[:8]


@dataclass(frozen=True, slots=True)
class OrderStatus:
    """An order as apply.lua keeps it for its refunds: its amount, the refunds applied."""

    cents: int
    refunded_cents: int
    refunds: int

    @property
    def full(self) -> bool:
        """Refunded in full: no longer a purchase."""
        return self.refunds > 0 and self.refunded_cents >= self.cents

    @classmethod
    def parse(cls, entry: str | None) -> OrderStatus | None:
        """From the orders hash ("ts:cents[:refunded:refunds]", base 36); None for an order
        not (or no longer) kept, or only refunded so far."""
        if entry is None or entry.startswith("?"):
            return None
        parts = [int(part, 36) for part in entry.split(":")]
        refunded, refunds = parts[2:4] if len(parts) == 4 else (0, 0)
        return cls(parts[1], refunded, refunds)


def digest(event: Purchase | Refund | Cart | Browse | Interaction, ts_ms: int) -> str:
    """A short fingerprint of an event's content, kept beside its id: the same id
    again with another fingerprint is a conflicting duplicate. The time counts as an
    instant, so a resend that writes it in another accepted form is the same event."""
    canonical = event if event.ts == ts_ms else msgspec.structs.replace(event, ts=ts_ms)
    return _short_hash(msgspec.json.encode(canonical))


def encode(
    event: Purchase | Refund | Cart | Browse | Interaction, ts_ms: int, offset: int, arrival_ms: int | None = None
) -> list[object]:
    """The compact array the Lua script reads (apply.lua beside this module). arrival_ms:
    when the event reached the input topic (the record's timestamp), which the dedupe
    window counts from; the event's own time when not given."""
    day = day_of(ts_ms)
    weekend = 1 if (day + _THURSDAY) % 7 in _WEEKEND else 0
    arrival_min = (ts_ms if arrival_ms is None else arrival_ms) // MINUTE_MS
    head: list[object] = [id_key(event.event_id), offset, digest(event, ts_ms), arrival_min]
    if isinstance(event, Purchase):
        items: list[object] = []
        for item in event.items:
            items += [item.category, item.sku, item.qty, cents(item.qty * item.price)]
        return [*head, "p", day, ts_ms, event.channel, weekend, order_key(event.order_id), cents(event.amount), items]
    if isinstance(event, Refund):
        return [*head, "r", day, ts_ms, event.channel, weekend, order_key(event.order_id), cents(event.amount)]
    if isinstance(event, Cart):
        return [*head, "c", day, ts_ms, event.channel, weekend, event.action]
    if isinstance(event, Interaction):
        return [*head, "i", day, ts_ms, event.channel, weekend, event.kind]
    return [*head, "b", day, ts_ms, event.channel, weekend, ""]


@dataclass(frozen=True)
class RawState:
    """A user's hashes as read from Redis (strings as stored)."""

    profile: dict[str, str]
    days: dict[str, str]
    categories: dict[str, str]
    skus: dict[str, str]
    channels: dict[str, str]


class AsOfOutOfRange(TierflowError, ValueError):
    """The requested window reaches behind the retained day buckets."""


@dataclass(frozen=True)
class Summary:
    user_id: str
    as_of_ms: int
    recency_days: int | None
    frequency: dict[str, int]
    monetary_cents: dict[str, int]
    first_purchase_ms: int | None
    last_purchase_ms: int | None
    categories: dict[str, dict[str, float]] = field(default_factory=dict)
    skus: dict[str, dict[str, int]] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    purchase_channels: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    # Money refunded on orders that arrived (already taken off the monetary figures).
    refunded_cents: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "user_id": self.user_id,
            "as_of": iso(self.as_of_ms),
            "recency_days": self.recency_days,
            "frequency": self.frequency,
            "monetary": {k: v / 100 for k, v in self.monetary_cents.items()},
            "first_purchase": iso(self.first_purchase_ms) if self.first_purchase_ms is not None else None,
            "last_purchase": iso(self.last_purchase_ms) if self.last_purchase_ms is not None else None,
            "categories": self.categories,
            "skus": self.skus,
            "channels": self.channels,
            "purchase_channels": self.purchase_channels,
            "counts": self.counts,
            "refunded": self.refunded_cents / 100,
        }


_PACKED = ("o", "q", "a")  # orders, quantity, cents: the order of a category's or sku's packed counters


def _split(fields: dict[str, str]) -> dict[str, dict[str, int]]:
    """{"snacks": "1:3:990"} -> {"snacks": {"o": 1, "q": 3, "a": 990}}. State written by
    earlier versions, not yet touched since, has a field per counter: {"q:snacks": "3", ...}."""
    out: dict[str, dict[str, int]] = {}
    for name, value in fields.items():
        if ":" in value:
            out[name] = {prefix: int(n) for prefix, n in zip(_PACKED, value.split(":"), strict=False)}
        else:
            prefix, _, key = name.partition(":")
            out.setdefault(key, {})[prefix] = int(value)
    return out


def _day_buckets(fields: dict[str, str]) -> tuple[dict[int, int], dict[int, int]]:
    """Purchases and cents per day from {"c20400": "2:1990"}; earlier versions kept
    {"c20400": "2", "a20400": "1990"}."""
    counts: dict[int, int] = {}
    amounts: dict[int, int] = {}
    for name, value in fields.items():
        day = int(name[1:])
        if ":" in value:
            count, amount = value.split(":")
            counts[day], amounts[day] = int(count), int(amount)
        else:
            (counts if name[0] == "c" else amounts)[day] = int(value)
    return counts, amounts


def summarize(
    user_id: str, raw: RawState, as_of_ms: int, windows_days: list[int], retention_days: int
) -> Summary:
    """Recency, frequency and monetary as of a time, from the stored day buckets."""
    profile = raw.profile
    as_of_day = day_of(as_of_ms)
    maxday = int(profile.get("maxday", "-1"))
    oldest_needed = as_of_day - max(windows_days) + 1
    if maxday >= 0 and oldest_needed <= maxday - retention_days:
        raise AsOfOutOfRange(
            f"as-of {iso(as_of_ms)} needs day buckets older than the {retention_days}-day retention"
        )
    counts, amounts = _day_buckets(raw.days)

    frequency: dict[str, int] = {}
    monetary: dict[str, int] = {}
    for window in windows_days:
        first = as_of_day - window + 1
        frequency[f"{window}d"] = sum(n for d, n in counts.items() if first <= d <= as_of_day)
        monetary[f"{window}d"] = sum(a for d, a in amounts.items() if first <= d <= as_of_day)
    frequency["lifetime"] = int(profile.get("pc", "0"))
    monetary["lifetime"] = int(profile.get("pa", "0"))

    last_ms = int(profile["lp"]) if "lp" in profile else None
    first_ms = int(profile["fp"]) if "fp" in profile else None
    if last_ms is not None and day_of(last_ms) <= as_of_day:
        recency: int | None = as_of_day - day_of(last_ms)
    else:
        # The newest purchase is after the as-of day: the latest retained bucket up to it decides.
        past = [d for d in counts if d <= as_of_day]
        recency = as_of_day - max(past) if past else None

    categories = {
        cat: {"orders": v.get("o", 0), "qty": v.get("q", 0), "amount": v.get("a", 0) / 100}
        for cat, v in _split(raw.categories).items()
    }
    skus = {sku: {"orders": v.get("o", 0), "qty": v.get("q", 0)} for sku, v in _split(raw.skus).items()}
    channels = {k: int(v) for k, v in raw.channels.items() if not k.startswith("p:")}
    purchase_channels = {k[2:]: int(v) for k, v in raw.channels.items() if k.startswith("p:")}
    count_fields = {
        "browse": "nb", "cart": "nc", "interaction": "ni", "refund": "nr",
        "purchase_weekday": "pwd", "purchase_weekend": "pwe",
    }
    event_counts = {name: int(profile.get(f, "0")) for name, f in count_fields.items()}
    for name, value in profile.items():
        if name.startswith(("k:", "c:")):
            event_counts[("interaction:" if name[0] == "k" else "cart:") + name[2:]] = int(value)
    return Summary(
        user_id=user_id,
        as_of_ms=as_of_ms,
        recency_days=recency,
        frequency=frequency,
        monetary_cents=monetary,
        first_purchase_ms=first_ms,
        last_purchase_ms=last_ms,
        categories=categories,
        skus=skus,
        channels=channels,
        purchase_channels=purchase_channels,
        counts=event_counts,
        refunded_cents=int(profile.get("ra", "0")),
    )
