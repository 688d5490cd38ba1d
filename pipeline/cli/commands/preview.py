"""`tierflow preview --config NEW.toml [--json]`: what a new configuration would change,
computed from the current state, writing and publishing nothing (pipeline/preview/).

The flow of a configuration change: preview it; start the workers with it
(`TIERFLOW_CONFIG=NEW.toml`); then `tierflow --config NEW.toml reevaluate` re-scores
everyone under it and the workers publish the resulting changes (reason config_change)
and grant what the tier-triggered rules give.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from tierflow.pipeline.cli.progress import progress
from tierflow.pipeline.config.context import from_args
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.preview.run import Preview, Previewer
from tierflow.pipeline.rewards.engine import RewardEngine
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.tiering.keys import Shards
from tierflow.pipeline.tiering.population import PopulationStats

NONE = "-"  # a customer without a value (no segment before a first purchase)


def _preview(args: argparse.Namespace) -> int:
    ctx = from_args(args)
    new = load_config(args.new_config)
    client = connect(ctx.settings.redis_url)
    try:
        previewer = Previewer(client, new)
        state = StateStore(client, new.state.retention_days)
        total = state.user_count()
        snapshot = PopulationStats(client, Shards.of(new.tiering.population.shards), new.tiering).snapshot()
        now_ms = int(time.time() * 1000)
        # Two passes over everyone (Previewer.run): one bar for both.
        with progress("evaluating under the new configuration", 2 * total) as show:
            result = previewer.run(state.users, snapshot.population, now_ms,
                                   lambda n, done: show((n - 1) * total + done))
        left = {cid: c["left_cents"] for cid, c in
                RewardEngine(client, new.rewards).report(now_ms)["campaigns"].items()}  # type: ignore[attr-defined]
    finally:
        client.close()
    doc = {"config": str(args.new_config), "users": result.users, "moves": result.moves.to_json(),
           "changes": result.changes, "rewards": result.budget.report(left)}
    if args.json:
        print(orjson.dumps(doc).decode())
    else:
        render(result, doc, args.new_config)
    return 0


def render(result: Preview, doc: dict, path: Path) -> None:
    console = Console(highlight=False)
    console.print(f"preview of {path} over {result.users:,} customers (nothing written or published):"
                  f" {result.changes:,} tier changes would be published")
    for dim, cells in result.moves.cells.items():
        console.print(f"\n{dim}: {result.moves.moved(dim):,} customers would move")
        if not result.moves.moved(dim):
            continue
        olds = sorted({old or NONE for old, _ in cells})
        news = sorted({new or NONE for _, new in cells})
        table = Table("from \\ to", *news)
        for old in olds:
            table.add_row(old, *(f"{cells.get((_value(old), _value(new)), 0):,}" for new in news))
        console.print(table)
    rewards = doc["rewards"]
    console.print(f"\ntier-triggered rewards: {rewards['cost_cents'] / 100:,.2f} within budgets")
    for cid, c in rewards["campaigns"].items():
        left = "unlimited" if c["left_cents"] is None else f"{c['left_cents'] / 100:,.2f} left"
        console.print(f"  {cid}: {c['grants']:,} grants, {c['cost_cents'] / 100:,.2f} ({left})")
    console.print(f"\napply: start the workers with TIERFLOW_CONFIG={path}, then run"
                  f" `tierflow --config {path} reevaluate`")


def _value(shown: str) -> str | None:
    return None if shown == NONE else shown


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "preview", help="what a new configuration would change (segments, lifecycle, tiers, reward budget)",
        description="Reads the current state only: writes and publishes nothing. Exit status: 0, 1 an error,"
                    " 2 a configuration that does not validate.",
    )
    parser.add_argument("--config", dest="new_config", type=Path, required=True, metavar="NEW.toml",
                        help="the configuration to preview")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=_preview)
