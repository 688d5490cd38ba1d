"""A live, throttled view of tier changes and reward grants for the demo."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import orjson
from confluent_kafka import Consumer

from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.kafka import clients

LINES_PER_SECOND = 2
# How long the feed's consumer, when the demo ends, serves a rebalance under way before it closes.
LEAVE_WAIT_S = 1.0


def describe(topic_kind: str, record: dict) -> str:
    if topic_kind == "tier":
        return (f"tier    {record['user_id']:<9} {record['dimension']:<10} "
                f"{record['old'] or '-'} -> {record['new'] or '-'}  ({record['reason']})")
    items = record.get("items") or []
    prizes = ", ".join(sorted({f"{i['type']}:{i['prize']}" for i in items})) or "-"
    return f"reward  {record['user_id']:<9} {record['kind']:<10} {prizes}"


class LiveFeed(threading.Thread):
    """Prints a sample of new tier.changes and reward.grants records as they arrive."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="tierflow-livefeed", daemon=True)
        self.kinds = {settings.topics.tier_changes: "tier", settings.topics.reward_grants: "reward"}
        self.consumer = Consumer(settings.kafka.confluent(**{
            "group.id": f"{settings.group_id}-demo-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "latest", "enable.auto.commit": False,
        }))
        self.counts: Counter[str] = Counter()
        self.stop_event = threading.Event()

    def run(self) -> None:
        self.consumer.subscribe(list(self.kinds))
        shown_at = 0.0
        try:
            while not self.stop_event.is_set():
                for msg in self.consumer.consume(500, 0.2):
                    if msg.error():
                        continue
                    kind = self.kinds[msg.topic()]
                    self.counts[kind] += 1
                    now = time.monotonic()
                    if now - shown_at >= 1 / LINES_PER_SECOND:
                        shown_at = now
                        print("  " + describe(kind, orjson.loads(msg.value())), flush=True)
        finally:
            clients.close_subscribed(self.consumer, LEAVE_WAIT_S)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)
