"""A marketing consumer of `tier.changes`: reacts to each user's new segment,
lifecycle stage, membership tier and AIPL stage with the action the playbook
names (docs/domain.md, "The eight RFM segments"), and shows the contract in use:

- records are keyed by user id and validated against the TierChange record;
- delivery is at least once, so duplicates are dropped by (user_id, dimension,
  version), keeping the highest version seen per user and dimension (a real
  consumer would keep that in its own store, beside the action it took).

Run from the repository root (same environment variables as the worker):

    python -m examples.marketing_consumer --from-beginning --idle-timeout 10
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from confluent_kafka import Consumer, KafkaError

from tierflow.pipeline.config.settings import Settings
from tierflow.schemas.tier_changes import TierChange

# The "typical action" column of docs/domain.md, "The eight RFM segments".
SEGMENT_ACTIONS = {
    "important_value": "protect: exclusive perks, VIP service, gifts",
    "important_develop": "raise frequency: light membership, campaigns",
    "important_retain": "re-engage before they drift",
    "important_win_back": "win back with targeted offers",
    "general_value": "grow basket size",
    "general_develop": "nurture",
    "general_retain": "low-cost retention content",
    "general_win_back": "cheap reactivation or let go",
}


@dataclass
class Stats:
    received: int = 0
    duplicates: int = 0
    invalid: int = 0
    actions: list[str] = field(default_factory=list)


class Deduplicator:
    """Highest version seen per (user, dimension): anything not above it is a duplicate."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], int] = {}

    def fresh(self, change: TierChange) -> bool:
        key = (change.user_id, change.dimension)
        if change.version <= self.seen.get(key, 0):
            return False
        self.seen[key] = change.version
        return True


def action_for(change: TierChange) -> str:
    who = f"user {change.user_id}"
    if change.dimension == "segment":
        if change.new is None:
            return f"{who} left segment {change.old}: stop its campaigns"
        return f"{who} -> {change.new} ({change.reason}): {SEGMENT_ACTIONS[change.new]}"
    if change.dimension == "membership":
        return f"{who} membership {change.old} -> {change.new}: update benefits, points {change.points}"
    if change.dimension == "lifecycle":
        return f"{who} lifecycle {change.old} -> {change.new} (repurchases {change.repurchases})"
    return f"{who} AIPL {change.old} -> {change.new}: adjust journey messaging"


def run(
    settings: Settings,
    *,
    group_id: str,
    from_beginning: bool,
    idle_timeout_s: float,
    max_messages: int | None = None,
    out: Callable[[str], None] = print,
) -> Stats:
    """Consume until idle for idle_timeout_s (or max_messages records)."""
    consumer = Consumer(settings.kafka.confluent(**{
        "group.id": group_id,
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "enable.auto.commit": True,
    }))
    consumer.subscribe([settings.topics.tier_changes])
    stats, dedupe = Stats(), Deduplicator()
    try:
        while max_messages is None or stats.received < max_messages:
            msg = consumer.poll(idle_timeout_s)
            if msg is None:
                break
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    out(f"consumer error: {msg.error()}")
                continue
            stats.received += 1
            try:
                change = msgspec.json.decode(msg.value(), type=TierChange)
            except msgspec.ValidationError as exc:
                stats.invalid += 1
                out(f"skipping invalid record at offset {msg.offset()}: {exc}")
                continue
            if not dedupe.fresh(change):
                stats.duplicates += 1
                continue
            action = action_for(change)
            stats.actions.append(action)
            out(action)
    finally:
        consumer.close()
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", default=f"marketing-example-{uuid.uuid4().hex[:8]}")
    parser.add_argument("--from-beginning", action="store_true")
    parser.add_argument("--idle-timeout", type=float, default=30.0, help="stop after this many idle seconds")
    args = parser.parse_args(argv)
    stats = run(Settings.from_env(), group_id=args.group, from_beginning=args.from_beginning,
                idle_timeout_s=args.idle_timeout)
    print(f"{stats.received} records, {len(stats.actions)} actions, {stats.duplicates} duplicates dropped,"
          f" {stats.invalid} invalid", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
