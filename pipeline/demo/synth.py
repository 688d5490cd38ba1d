"""A realistic synthetic population for the demo, the tests and the benchmarks.

Personas follow docs/domain.md: new visitors who only browse, bargain
hunters who claim coupons and buy cheap, loyal repeat buyers, lapsed customers
whose purchases stopped months ago, and a few VIPs who spend heavily. A small
share of orders is refunded within two weeks, in full or one line. Output is
deterministic for a seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from tierflow.pipeline.state.summary import DAY_MS

CHANNELS = ("app", "mini_program", "web", "store", "marketplace", "chat")
CATEGORIES = {
    "snacks": (3.5, 29.0),
    "dried_fruit": (9.9, 79.0),
    "beauty": (49.0, 399.0),
    "apparel": (59.0, 699.0),
    "home": (19.0, 299.0),
    "electronics": (99.0, 2999.0),
    "baby": (29.0, 259.0),
}
BRANDS = ("acme", "lotus", "panda", "zenith", "harbor")
# The default paid-membership SKU (tiering.membership.paid.sku).
MEMBERSHIP_SKU = "MEMBERSHIP-88VIP"
# Orders refunded by default, how long after the order at most, and how many of those in full
# (the rest return one line of an order of several).
REFUND_SHARE = 0.02
RETURN_DAYS = 14
FULL_REFUND_SHARE = 0.6


@dataclass(frozen=True)
class Persona:
    name: str
    share: float
    purchases: tuple[int, int]  # per user over the whole period
    basket: tuple[int, int]  # items per order
    price_scale: float
    browse_per_purchase: int
    active_until: float  # fraction of the period after which the persona stops buying
    interactions: tuple[str, ...]


PERSONAS = (
    Persona("new_visitor", 0.35, (0, 0), (1, 1), 1.0, 6, 1.0, ("like", "follow", "content_read")),
    Persona("bargain_hunter", 0.25, (1, 6), (1, 2), 0.4, 4, 1.0,
            ("coupon_claim", "coupon_claim", "campaign_join", "share")),
    Persona("loyal_repeat", 0.2, (6, 30), (1, 4), 1.0, 3, 1.0,
            ("favorite", "sign_in", "referral_invite", "review")),
    Persona("lapsed", 0.15, (1, 5), (1, 3), 0.8, 3, 0.4, ("like", "content_read")),
    Persona("vip", 0.05, (15, 60), (2, 6), 2.5, 2, 1.0,
            ("favorite", "sign_in", "referral_invite", "referral_accept", "campaign_join")),
)


def _iso(ts_ms: int) -> str:
    seconds, millis = divmod(ts_ms, 1000)
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


class Population:
    def __init__(
        self, users: int, days: int, end_ms: int, seed: int = 7, run: str = "r", refund_share: float = REFUND_SHARE
    ) -> None:
        """refund_share: the share of orders refunded (0 for none)."""
        self.users = users
        self.days = days
        self.end_ms = end_ms
        self.start_ms = end_ms - days * DAY_MS
        self.rng = random.Random(seed)
        self.run = run
        self.counter = 0
        # Refunds draw from their own generator and ids, so the other events are the same whatever the share.
        self.refund_share = refund_share
        self.refund_rng = random.Random(f"refunds-{seed}")
        self.refunds = 0
        weights = [p.share for p in PERSONAS]
        self.persona_of = {
            f"c{i:06d}": self.rng.choices(PERSONAS, weights)[0] for i in range(1, users + 1)
        }

    def _event_id(self) -> str:
        self.counter += 1
        return f"{self.run}-{self.counter:09d}"

    def _ts(self, latest_fraction: float = 1.0) -> int:
        span = int((self.end_ms - self.start_ms) * latest_fraction)
        # Never exactly at end_ms, so "now" callers stay within the future-skew limit.
        return self.start_ms + self.rng.randrange(max(span - 1000, 1))

    def _common(self, user_id: str, kind: str, ts_ms: int, channel: str) -> dict[str, object]:
        # Half the producers send RFC 3339, half epoch milliseconds: both are in the contract.
        ts: object = _iso(ts_ms) if self.rng.random() < 0.5 else ts_ms
        return {"event_id": self._event_id(), "type": kind, "user_id": user_id, "ts": ts, "channel": channel}

    def _membership(self, user_id: str, channel: str) -> dict[str, object]:
        """The paid top tier (88VIP) is bought like any SKU."""
        return {**self._common(user_id, "purchase", self._ts(), channel), "order_id": f"{self.run}-m{self.counter}",
                "amount": 88.0, "currency": "CNY",
                "items": [{"sku": MEMBERSHIP_SKU, "category": "membership", "qty": 1, "price": 88.0}]}

    def _refund(self, order: dict, ts_ms: int) -> dict[str, object] | None:
        """A refund of `order`, placed at ts_ms (in full, or one line of several), or None if it
        would come after the end."""
        rng = self.refund_rng
        at = ts_ms + rng.randrange(DAY_MS // 24, RETURN_DAYS * DAY_MS)
        if at >= self.end_ms - 1000:
            return None
        items: list[dict] = order["items"]
        full = len(items) == 1 or rng.random() < FULL_REFUND_SHARE
        returned = items if full else [rng.choice(items)]
        amount = order["amount"] if full else round(returned[0]["qty"] * returned[0]["price"], 2)
        self.refunds += 1
        return {"event_id": f"{self.run}-r{self.refunds:09d}", "type": "refund", "user_id": order["user_id"],
                "ts": _iso(at) if rng.random() < 0.5 else at, "channel": order["channel"],
                "order_id": order["order_id"], "amount": amount, "currency": order["currency"], "items": returned,
                "reason": rng.choice(("returned", "cancelled", "damaged")) if full else "returned"}

    def user_events(self, user_id: str) -> Iterator[dict[str, object]]:
        persona = self.persona_of[user_id]
        rng = self.rng
        home_channels = rng.sample(CHANNELS, 2)
        favourite = rng.choice(list(CATEGORIES))
        n_purchases = rng.randint(*persona.purchases)
        for _ in range(n_purchases):
            ts = self._ts(persona.active_until)
            channel = rng.choice(home_channels)
            items = []
            for _ in range(rng.randint(*persona.basket)):
                category = favourite if rng.random() < 0.6 else rng.choice(list(CATEGORIES))
                low, high = CATEGORIES[category]
                price = round(rng.uniform(low, high) * persona.price_scale, 2)
                items.append({
                    "sku": f"{category[:2].upper()}{rng.randint(1, 40):03d}",
                    "category": category, "brand": rng.choice(BRANDS),
                    "qty": rng.randint(1, 3), "price": price,
                })
            amount = round(sum(i["qty"] * i["price"] for i in items), 2)
            for _ in range(persona.browse_per_purchase):
                yield {**self._common(user_id, "browse", ts - rng.randrange(1, 3_600_000), channel),
                       "sku": items[0]["sku"], "category": items[0]["category"],
                       "source": rng.choice(("search", "ad", "share", "feed"))}
            yield {**self._common(user_id, "cart", ts - rng.randrange(1, 600_000), channel),
                   "action": "add", "sku": items[0]["sku"], "category": items[0]["category"],
                   "qty": items[0]["qty"], "price": items[0]["price"]}
            order = {**self._common(user_id, "purchase", ts, channel),
                     "order_id": f"{self.run}-o{self.counter}", "amount": amount, "currency": "CNY", "items": items}
            yield order
            if self.refund_rng.random() < self.refund_share:
                refund = self._refund(order, ts)
                if refund is not None:
                    yield refund
        if n_purchases == 0:
            for _ in range(rng.randint(1, persona.browse_per_purchase)):
                yield {**self._common(user_id, "browse", self._ts(), rng.choice(home_channels)),
                       "page": rng.choice(("home", "search", "campaign", "category")),
                       "category": favourite, "source": rng.choice(("search", "ad", "share"))}
            if rng.random() < 0.3:
                low, high = CATEGORIES[favourite]
                yield {**self._common(user_id, "cart", self._ts(), rng.choice(home_channels)),
                       "action": "add", "sku": f"{favourite[:2].upper()}001", "category": favourite,
                       "qty": 1, "price": round(rng.uniform(low, high), 2)}
        if persona.name == "vip" and rng.random() < 0.5:
            yield self._membership(user_id, rng.choice(home_channels))
        for _ in range(rng.randint(0, 4)):
            yield {**self._common(user_id, "interaction", self._ts(), rng.choice(home_channels)),
                   "kind": rng.choice(persona.interactions), "target": favourite}

    def events(self) -> Iterator[dict[str, object]]:
        for user_id in self.persona_of:
            yield from self.user_events(user_id)
