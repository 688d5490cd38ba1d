"""`tierflow segments` and `tierflow reevaluate`: the population's tiers."""

from __future__ import annotations

import argparse
import sys
import time

import orjson

from tierflow.pipeline.config.context import from_args
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.tiering.store import TierStore


def render_segments(report: dict) -> str:
    means = report["means"]
    lines = [f"scored users {report['scored_users']:,} of {report['users']:,}; means "
             + "  ".join(f"{d.upper()} {m:.2f}" if m is not None else f"{d.upper()} -" for d, m in means.items())]
    for dimension in ("segments", "lifecycle", "membership", "aipl"):
        lines.append(f"{dimension}:")
        for name, count in sorted(report[dimension].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {name:<22} {count:>8,}")
    return "\n".join(lines)


def _segments(args: argparse.Namespace) -> int:
    ctx = from_args(args)
    report = TierStore(connect(ctx.settings.redis_url), ctx.config).report()
    print(orjson.dumps(report).decode() if args.json else render_segments(report))
    return 0


def _reevaluate(args: argparse.Namespace) -> int:
    ctx = from_args(args)
    client = connect(ctx.settings.redis_url)
    users = StateStore(client, ctx.config.state.retention_days)
    tiers = TierStore(client, ctx.config)
    total = users.user_count()
    sys.stderr.write(f"re-evaluating {total:,} users with the current configuration...\n")
    result = tiers.reevaluate_all(users.users(), int(time.time() * 1000))
    print(f"evaluated {result.evaluated:,} users, {len(result.appended):,} tier changes "
          "(the worker publishes them to tier.changes)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("segments", help="users per RFM segment, lifecycle stage, membership tier, AIPL stage")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=_segments)
    parser = sub.add_parser("reevaluate", help="re-score everyone after a configuration change")
    parser.set_defaults(func=_reevaluate)
