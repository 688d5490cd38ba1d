"""Benchmark traffic: events of a fixed type mix, as apps send them. Pure and
deterministic for a seed; the callers produce them.

- `Traffic.backlog(n)`: n events of random customers spread over `days`, in time
  order (a backlog replayed as it happened);
- `Traffic.daily(customers, days)`: customers active every day (two touchpoints a
  day, a purchase a week), for the state-size figure;
- `Traffic.live(now_ms)`: one event stamped now, for the paced latency run.

Times are epoch milliseconds. Ids carry the run tag, so two runs never collide.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from tierflow.pipeline.demo.synth import BRANDS, CATEGORIES, CHANNELS
from tierflow.pipeline.state.summary import DAY_MS

# The mix of issue 11: 60% browse, 20% cart, 10% interaction, 10% purchase.
MIX: tuple[tuple[str, float], ...] = (("browse", 0.6), ("cart", 0.2), ("interaction", 0.1), ("purchase", 0.1))
INTERACTIONS = ("like", "favorite", "share", "coupon_claim", "sign_in", "review")
SOURCES = ("search", "ad", "share", "feed")
MAX_LINES = 3  # order lines per purchase
MAX_QTY = 3
SKUS_PER_CATEGORY = 40
DAILY_TOUCHPOINTS = ("browse", "interaction")
PURCHASE_EVERY_DAYS = 7
# Daily customers' touchpoints fall inside the day, clear of midnight.
DAY_SPREAD_MS = DAY_MS // 2


def customer_id(i: int) -> str:
    return f"c{i:07d}"


class Traffic:
    def __init__(self, customers: int, days: int, end_ms: int, seed: int, run: str) -> None:
        self.customers = customers
        self.days = days
        self.end_ms = end_ms
        self.rng = random.Random(seed)
        self.run = run
        self.counter = 0
        self.kinds = [kind for kind, _ in MIX]
        self.weights = [share for _, share in MIX]
        self.categories = list(CATEGORIES)

    def _id(self) -> str:
        self.counter += 1
        return f"{self.run}-{self.counter:09d}"

    def _item(self) -> dict[str, object]:
        category = self.rng.choice(self.categories)
        low, high = CATEGORIES[category]
        return {
            "sku": f"{category[:2].upper()}{self.rng.randint(1, SKUS_PER_CATEGORY):03d}",
            "category": category, "brand": self.rng.choice(BRANDS),
            "qty": self.rng.randint(1, MAX_QTY), "price": round(self.rng.uniform(low, high), 2),
        }

    def event(self, kind: str, user_id: str, ts_ms: int) -> dict[str, object]:
        """One valid event of the contract (schemas/events.py)."""
        rng = self.rng
        event_id = self._id()
        head: dict[str, object] = {
            "event_id": event_id, "type": kind, "user_id": user_id, "ts": ts_ms, "channel": rng.choice(CHANNELS),
        }
        if kind == "browse":
            item = self._item()
            return {**head, "sku": item["sku"], "category": item["category"], "source": rng.choice(SOURCES)}
        if kind == "cart":
            item = self._item()
            return {**head, "action": "add", "sku": item["sku"], "category": item["category"],
                    "qty": item["qty"], "price": item["price"]}
        if kind == "interaction":
            return {**head, "kind": rng.choice(INTERACTIONS), "target": rng.choice(self.categories)}
        items = [self._item() for _ in range(rng.randint(1, MAX_LINES))]
        amount = round(sum(float(i["qty"]) * float(i["price"]) for i in items), 2)  # type: ignore[arg-type]
        return {**head, "order_id": f"o-{event_id}", "amount": amount, "currency": "CNY", "items": items}

    def kind(self) -> str:
        return self.rng.choices(self.kinds, self.weights)[0]

    def backlog(self, n: int) -> Iterator[dict[str, object]]:
        """n events of random customers over the last `days` days, oldest first."""
        start = self.end_ms - self.days * DAY_MS
        times = sorted(self.rng.randrange(start, self.end_ms) for _ in range(n))
        for ts in times:
            yield self.event(self.kind(), customer_id(self.rng.randint(1, self.customers)), ts)

    def daily(self, users: list[str], days: int) -> Iterator[dict[str, object]]:
        """Each user active every day for `days` days up to end_ms, oldest day first."""
        first_day = self.end_ms // DAY_MS - days
        for day in range(first_day, first_day + days):
            for user in users:
                for kind in DAILY_TOUCHPOINTS:
                    yield self.event(kind, user, day * DAY_MS + self.rng.randrange(DAY_SPREAD_MS))
                if (day - first_day) % PURCHASE_EVERY_DAYS == 0:
                    yield self.event("purchase", user, day * DAY_MS + self.rng.randrange(DAY_SPREAD_MS))

    def live(self, now_ms: int) -> dict[str, object]:
        return self.event(self.kind(), customer_id(self.rng.randint(1, self.customers)), now_ms)
