"""`tierflow user ID [--json] [--as-of RFC3339]`: what the pipeline knows about one customer."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from datetime import datetime

import orjson

from tierflow.pipeline.cli.errors import CliError
from tierflow.pipeline.config.context import Context, from_args
from tierflow.pipeline.ingest.validate import parse_ts
from tierflow.pipeline.lua import Redis
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.state.summary import DAY_MS, AsOfOutOfRange, iso, summarize
from tierflow.pipeline.tiering.config import DowngradeConfig
from tierflow.pipeline.tiering.grace import HELD, decode_holds
from tierflow.pipeline.tiering.keys import TierKeys
from tierflow.pipeline.tiering.store import TierStore


def _as_of_ms(text: str | None) -> int:
    if text is None:
        return int(time.time() * 1000)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise CliError(f"--as-of: not an RFC 3339 time: {text!r}", 2) from exc
    if parsed.tzinfo is None:
        raise CliError("--as-of needs an offset (e.g. 2026-11-01T00:00:00Z)", 2)
    return parse_ts(text)


def render_text(doc: dict) -> str:
    lines = [f"user {doc['user_id']} as of {doc['as_of']}"]
    recency = doc["recency_days"]
    lines.append(f"  last purchase   {doc['last_purchase'] or 'never'}"
                 + (f" ({recency} days ago)" if recency is not None else ""))
    lines.append(f"  first purchase  {doc['first_purchase'] or 'never'}")
    freq = "  ".join(f"{k}: {v}" for k, v in doc["frequency"].items())
    money = "  ".join(f"{k}: {v:,.2f}" for k, v in doc["monetary"].items())
    lines.append(f"  purchases       {freq}")
    lines.append(f"  spent           {money}")
    top = sorted(doc["categories"].items(), key=lambda kv: -kv[1]["amount"])[:5]
    if top:
        lines.append("  categories      " + ", ".join(f"{c} ({v['amount']:,.2f})" for c, v in top))
    if "segment" in doc:
        scores = doc["scores"]
        membership = doc["membership"]
        lines.append(f"  RFM             R{scores['r']} F{scores['f']} M{scores['m']}  "
                     f"segment {doc['segment'] or '-'}  lifecycle {doc['lifecycle']}  aipl {doc['aipl']}")
        lines.append(f"  membership      {membership['tier']} ({membership['points']:,} points, "
                     f"paid tier offer {membership['offer_price']}"
                     + (f", paid until {membership['paid_until']}" if membership["paid_until"] else "") + ")")
        lines.append("  tags            " + ", ".join(doc["tags"]))
    for dim, hold in doc.get("held", {}).items():
        lines.append(f"  held            {dim} {hold['published']} until {hold['downgrade_at']}, then "
                     f"{hold['downgrade_to'] or '-'} (due since {hold['due_since']}"
                     + (", notice sent)" if hold["noticed"] else ")"))
    if doc["channels"]:
        lines.append("  channels        " + ", ".join(f"{c} {n}" for c, n in
                                                     sorted(doc["channels"].items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


def held_downgrades(stored: Mapping[str, str | None], current: Mapping[str, str | None],
                    rules: DowngradeConfig) -> dict[str, dict[str, object]]:
    """The downgrades held back by grace: `stored` the user's tier fields (`holds`, and
    `v:<dimension>` the value published), `current` what an evaluation finds now."""
    held: dict[str, dict[str, object]] = {}
    for dim, hold in decode_holds(stored.get("holds")).items():
        if dim not in HELD:
            continue
        held[dim] = {
            "published": stored.get(f"v:{dim}"), "downgrade_to": current.get(dim),
            "due_since": iso(hold.since_ms), "downgrade_at": iso(hold.since_ms + rules.grace_days(dim) * DAY_MS),
            "noticed": hold.noticed,
        }
    return held


def user_document(ctx: Context, user_id: str, as_of_ms: int, client: Redis | None = None) -> dict:
    """Raises CliError: 4 for an unknown user, 2 for an as-of time the state cannot answer.
    `client`: a connection the caller keeps (the app API's), else a new one."""
    client = client or connect(ctx.settings.redis_url)
    store = StateStore(client, ctx.config.state.retention_days)
    raw = store.read(user_id)
    if raw is None:
        raise CliError(f"unknown user {user_id!r}: no events applied for this id", 4)
    try:
        summary = summarize(user_id, raw, as_of_ms, ctx.config.state.windows_days,
                            ctx.config.state.retention_days)
        # Tiers as of the same instant, against the population snapshot in use.
        evaluation = TierStore(client, ctx.config).preview(user_id, as_of_ms)
    except AsOfOutOfRange as exc:
        raise CliError(str(exc), 2) from exc
    doc = summary.to_json()
    if evaluation is not None:
        doc.update(evaluation.to_json())
        # The preview is the evaluation before grace: a held downgrade is not published yet.
        fields = ("holds", *(f"v:{dim}" for dim in HELD))
        stored = dict(zip(fields, client.hmget(TierKeys.of(user_id).tier, fields), strict=True))
        doc["held"] = held_downgrades(stored, {dim: evaluation.value(dim) for dim in HELD},
                                      ctx.config.tiering.downgrade)
    return doc


def _user(args: argparse.Namespace) -> int:
    ctx = from_args(args)
    doc = user_document(ctx, args.user_id, _as_of_ms(args.as_of))
    print(orjson.dumps(doc).decode() if args.json else render_text(doc))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("user", help="one customer's state: recency, frequency, monetary, ...")
    parser.add_argument("user_id")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--as-of", metavar="RFC3339", help="evaluate windows as of this time (default now)")
    parser.set_defaults(func=_user)
