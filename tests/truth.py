"""Independent batch computation of per-user state straight from raw events.

Shares no code with the pipeline: its own timestamp parsing, decimal money,
its own windows. Stream results are compared against this.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal

DAY = 86_400_000


def ts_ms(ts: object) -> int:
    if isinstance(ts, int):
        return ts
    return int(datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp() * 1000)


def dedupe(events: list[dict]) -> list[dict]:
    seen: set[str] = set()
    unique = []
    for e in events:
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            unique.append(e)
    return unique


def user_truth(events: list[dict], as_of_ms: int, windows: list[int]) -> dict[str, dict]:
    by_user: dict[str, list[dict]] = defaultdict(list)
    for e in dedupe(events):
        by_user[e["user_id"]].append(e)
    as_of_day = as_of_ms // DAY
    out: dict[str, dict] = {}
    for user, evs in by_user.items():
        purchases = [(ts_ms(e["ts"]), Decimal(str(e["amount"])), e) for e in evs if e["type"] == "purchase"]
        days_before = [t // DAY for t, _, _ in purchases if t // DAY <= as_of_day]
        frequency: dict[str, int] = {}
        monetary: dict[str, float] = {}
        for w in windows:
            inside = [(t, a) for t, a, _ in purchases if as_of_day - w < t // DAY <= as_of_day]
            frequency[f"{w}d"] = len(inside)
            monetary[f"{w}d"] = float(sum((a for _, a in inside), Decimal(0)))
        frequency["lifetime"] = len(purchases)
        monetary["lifetime"] = float(sum((a for _, a, _ in purchases), Decimal(0)))
        categories: dict[str, dict] = {}
        for _, _, e in purchases:
            seen_in_order: set[str] = set()
            for item in e["items"]:
                c = categories.setdefault(item["category"], {"orders": 0, "qty": 0, "amount": Decimal(0)})
                c["qty"] += item["qty"]
                c["amount"] += Decimal(str(item["price"])) * item["qty"]
                if item["category"] not in seen_in_order:
                    seen_in_order.add(item["category"])
                    c["orders"] += 1
        channels: dict[str, int] = defaultdict(int)
        for e in evs:
            channels[e["channel"]] += 1
        times = [t for t, _, _ in purchases]
        out[user] = {
            "recency_days": as_of_day - max(days_before) if days_before else None,
            "frequency": frequency,
            "monetary": monetary,
            "first_purchase_ms": min(times) if times else None,
            "last_purchase_ms": max(times) if times else None,
            "categories": {k: {**v, "amount": float(v["amount"])} for k, v in categories.items()},
            "channels": dict(channels),
        }
    return out
