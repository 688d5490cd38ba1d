"""`tierflow why ID [--json] [--limit N]`: a customer's tier history with the reason of
each change, read from `tier.changes` (only the customer's lane, the one partition that
holds every record of theirs; pipeline/lanes.py)."""

from __future__ import annotations

import argparse

import msgspec
import orjson

from tierflow.pipeline.cli.errors import CliError
from tierflow.pipeline.config.context import Context, from_args
from tierflow.pipeline.erasure import topic as erasure_topic
from tierflow.pipeline.kafka.reader import read_topic
from tierflow.pipeline.lanes import Lanes
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.schemas.tier_changes import NOTICE_REASON, Factor, TierChange, Why

EXIT_UNKNOWN = 4


def _factor(dim: str, f: Factor) -> str:
    level = "high" if f.high else "low"
    mean = "" if f.mean is None else f", mean {f.mean:.2f}"
    if f.bound is None:
        band = "below every threshold"
    elif dim == "r":
        band = f"<= {f.bound:g} days"
    else:
        band = f">= {f.bound:g}"
    unit = {"r": " days", "f": " purchases", "m": " yuan"}[dim]
    return f"{dim.upper()}{f.score} {level} ({f.value:g}{unit} {band}{mean})"


def describe(why: Why | None) -> str:
    """One line: the rule and the inputs that decided it."""
    if why is None:
        return "(no explanation: written before explanations)"
    parts = [why.rule]
    factors = [_factor(d, f) for d, f in (("r", why.r), ("f", why.f), ("m", why.m)) if f is not None]
    if factors:
        parts.append(", ".join(factors))
    if why.prev is not None:
        parts.append(f"was R{why.prev.r} F{why.prev.f} M{why.prev.m}")
    if why.points is not None:
        parts.append(f"{why.points:,} points")
    if why.purchases is not None:
        parts.append(f"{why.purchases} purchases")
    if why.spend is not None:
        parts.append(f"{why.spend:,.2f} yuan spent")
    if why.bounds:
        parts.append("reached " + ", ".join(f"{k} {v:g}" for k, v in why.bounds.items()))
    if why.paid_until is not None:
        parts.append(f"paid until {why.paid_until}")
    if why.event_id is not None:
        parts.append(f"after {why.event_type} {why.event_id}")
    if why.downgrade_at is not None:
        parts.append(f"down to {why.downgrade_to} at {why.downgrade_at} unless the customer recovers")
    if why.held_since is not None:
        parts.append(f"downgrade held since {why.held_since}")
    return "; ".join(parts)


def render_text(user_id: str, changes: list[TierChange], total: int) -> str:
    shown = f"last {len(changes)} of {total}" if len(changes) < total else f"{total}"
    lines = [f"{user_id}: {shown} tier changes, oldest first"]
    for c in changes:
        move = f"{c.old} (held)" if c.reason == NOTICE_REASON else f"{c.old or '-'} -> {c.new or '-'}"
        lines.append(f"{c.event_time}  {c.dimension:<10} {move}  [{c.reason}]")
        lines.append(f"    {describe(c.why)}")
    return "\n".join(lines)


def history(ctx: Context, user_id: str) -> list[TierChange]:
    """The customer's records on tier.changes in the order they were published; exit 4 for
    a customer the pipeline does not know."""
    client = connect(ctx.settings.redis_url)
    lane = client.get(Lanes.key(user_id))
    if lane is None:
        if StateStore(client, ctx.config.state.retention_days).read(user_id) is None:
            raise CliError(f"unknown customer {user_id!r}: no events applied for this id", EXIT_UNKNOWN)
        return []  # known, but no change published yet
    topic = ctx.settings.topics.tier_changes
    erased = erasure_topic.load(ctx.settings)
    out: list[TierChange] = []
    for msg in read_topic(ctx.settings, topic, partitions=[int(lane)]):
        if msg.key() != user_id.encode():
            continue
        if erasure_topic.skipped(erased, user_id, topic, msg.partition(), msg.offset()):
            continue
        try:
            out.append(msgspec.json.decode(msg.value(), type=TierChange))
        except msgspec.DecodeError:  # not written by tierflow
            continue
    return out


def _why(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1", 2)
    ctx = from_args(args)
    changes = history(ctx, args.user_id)
    shown = changes[-args.limit:] if args.limit else changes
    if args.json:
        print(orjson.dumps(msgspec.to_builtins(shown)).decode())
    else:
        print(render_text(args.user_id, shown, len(changes)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("why", help="a customer's tier history, with why each change happened")
    parser.add_argument("user_id")
    parser.add_argument("--json", action="store_true", help="a JSON array of the tier.changes records")
    parser.add_argument("--limit", type=int, metavar="N", help="only the last N changes")
    parser.set_defaults(func=_why)
