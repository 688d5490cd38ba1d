"""Reward commands:

- `tierflow code claim CODE --user ID [--json]`: claim a universal code (NEW666) for a user.
- `tierflow wallet ID [--json] [--as-of T]`: a user's coupons, points and envelopes.
- `tierflow rewards [--json] [--as-of T]`: budgets, inventory, grants, liability, envelopes.

`code claim` exits 0 with the coupon issued; otherwise with a distinct status:
3 unknown code, 4 pool exhausted, 5 already claimed (the coupon claimed before is
shown), 6 not granted for another reason (campaign inactive, budget used up, the
customer held out in the campaign's control group, ...).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec
import orjson
import redis

from tierflow.pipeline.cli.errors import CliError
from tierflow.pipeline.config.context import Context, from_args
from tierflow.pipeline.ingest.validate import parse_ts
from tierflow.pipeline.rewards.claims import ClaimResult
from tierflow.pipeline.rewards.engine import RewardEngine
from tierflow.pipeline.rewards.wallet import describe
from tierflow.pipeline.state.store import connect
from tierflow.pipeline.state.summary import iso
from tierflow.schemas.reward_grants import RewardItem

EXIT_UNKNOWN_CODE = 3
EXIT_EXHAUSTED = 4
EXIT_ALREADY_CLAIMED = 5
EXIT_NOT_GRANTED = 6

_CLAIM_EXIT = {"unknown_code": EXIT_UNKNOWN_CODE, "exhausted": EXIT_EXHAUSTED,
               "already_claimed": EXIT_ALREADY_CLAIMED}


def _now_ms(as_of: str | None) -> int:
    if as_of is None:
        return int(time.time() * 1000)
    try:
        return parse_ts(as_of)
    except ValueError as exc:
        raise CliError(f"--as-of: not an RFC 3339 time with an offset: {as_of!r}", 2) from exc


@contextmanager
def _engine(args: argparse.Namespace) -> Iterator[tuple[Context, RewardEngine]]:
    ctx = from_args(args)
    try:
        # connect() already talks to Redis (is it a cluster?): inside the try too.
        client = connect(ctx.settings.redis_url)
        try:
            yield ctx, RewardEngine(client, ctx.config.rewards)
        finally:
            client.close()
    except redis.ConnectionError as exc:
        raise CliError(f"cannot reach Redis at {ctx.settings.redis_display()}: {exc}", 1) from exc


def _money(cents: int | None) -> str:
    return "unlimited" if cents is None else f"{cents / 100:,.2f}"


# --- code claim -----------------------------------------------------------------


def claim_document(code: str, user_id: str, result: ClaimResult) -> dict[str, object]:
    coupon = result.coupon
    return {
        "status": result.status,
        "code": code,
        "user_id": user_id,
        "coupon": msgspec.to_builtins(coupon) if coupon is not None else None,
        "record_id": result.record.record_id if result.record is not None else None,
    }


def _coupon_line(coupon: RewardItem) -> str:
    assert coupon.terms is not None
    return f"{coupon.item_id}: {describe(coupon)}, valid until {iso(coupon.terms.valid_until_ms)}"


def _claim(args: argparse.Namespace) -> int:
    with _engine(args) as (_, engine):
        result = engine.claim_code(args.code, args.user, _now_ms(args.as_of))
    if args.json:
        print(orjson.dumps(claim_document(args.code, args.user, result)).decode())
    coupon = result.coupon
    if result.status == "granted":
        if not args.json:
            got = f"coupon {_coupon_line(coupon)}" if coupon else f"{result.record.prize} granted"  # type: ignore[union-attr]
            print(f"{args.user} claimed {args.code.upper()}: {got}")
        return 0
    messages = {
        "unknown_code": f"unknown code {args.code!r}",
        "exhausted": f"code {args.code.upper()} is exhausted: every coupon has been handed out",
        "already_claimed": f"{args.user} already claimed {args.code.upper()}"
                           + (f": coupon {_coupon_line(coupon)}" if coupon else ""),
        "inactive": f"code {args.code.upper()} belongs to a campaign that is not running now",
        "budget_exhausted": f"code {args.code.upper()}: the campaign budget is used up",
        "out_of_stock": f"code {args.code.upper()}: a prize it grants is out of stock",
        "limit": f"{args.user} has reached the limit for {args.code.upper()}",
        "held_out": f"{args.user} is in the control group of {args.code.upper()}'s campaign: nothing is granted",
    }
    raise CliError(messages[result.status], _CLAIM_EXIT.get(result.status, EXIT_NOT_GRANTED))


# --- wallet ---------------------------------------------------------------------


def render_wallet(doc: dict) -> str:
    lines = [f"wallet of {doc['user_id']} as of {doc['as_of']}"]
    coupons = doc["coupons"]
    active = sum(1 for c in coupons if c["status"] == "active")
    lines.append(f"coupons: {active} usable of {len(coupons)}")
    for c in coupons:
        lines.append(f"  {c['item_id']:<28} {c['status']:<13} {c['terms']}; until {c['valid_until']}"
                     f"  [{c['campaign']}]")
    points = doc["points"]
    nxt = f", next expiry {points['next_expiry']}" if points["next_expiry"] else ""
    lines.append(f"points: {points['balance']:,}{nxt}")
    for lot in points["lots"]:
        expires = lot["expires_at"] or "never"
        lines.append(f"  {lot['item_id']:<28} {lot['remaining']:>8,} of {lot['points']:,}  expires {expires}"
                     f"  ({lot['status']})")
    env = doc["envelopes"]
    lines.append(f"cash envelopes: pending {_money(env['pending_cents'])}, available {_money(env['available_cents'])}"
                 f"{' (withdrawable)' if env['withdrawable'] else ''}, withdrawn {_money(env['withdrawn_cents'])}")
    for e in env["items"]:
        lines.append(f"  {e['item_id']:<28} {_money(e['amount_cents']):>10}  {e['status']}"
                     f" {'since' if e['status'] == 'available' else 'until'} {e['available_at']}")
    if doc["goods"]:
        lines.append("goods and rights:")
    for g in doc["goods"]:
        what = g["sku"] if g["type"] == "physical" else f"{g['partner']} {g['right']}"
        lines.append(f"  {g['item_id']:<28} {g['type']:<12} {what}  {g['status']}")
    return "\n".join(lines)


def _wallet(args: argparse.Namespace) -> int:
    with _engine(args) as (_, engine):
        doc = engine.wallet(args.user_id, _now_ms(args.as_of))
    print(orjson.dumps(doc).decode() if args.json else render_wallet(doc))
    return 0


# --- report ---------------------------------------------------------------------


def render_report(doc: dict) -> str:
    lines = [f"rewards as of {doc['as_of']} ({doc['users']} users with reward activity)",
             f"{'campaign':<18} {'budget':>12} {'spent':>12} {'left':>12} {'grants':>7} {'redeemed':>9}"
             f" {'discount':>10}  state"]
    for cid, c in doc["campaigns"].items():
        state = "running" if c["active"] else ("disabled" if not c["enabled"] else "outside window")
        lines.append(f"{cid:<18} {_money(c['budget_cents']):>12} {_money(c['spent_cents']):>12}"
                     f" {_money(c['left_cents']):>12} {c['grants']:>7} {c['redemptions']:>9}"
                     f" {_money(c['discount_cents']):>10}  {state}")
        for pid, inv in c["inventory"].items():
            lines.append(f"  inventory {pid}: {inv['left']} of {inv['stock']} left")
        for pid, pool in c["pools"].items():
            lines.append(f"  code {pool['code']} ({pid}): {pool['left']} of {pool['size']} coupons left")
        denied = {k: v for k, v in c["denied"].items() if v}
        if denied:
            lines.append("  refused: " + ", ".join(f"{n} ({why})" for why, n in denied.items()))
    by_type = ", ".join(f"{t} {n}" for t, n in doc["grants_by_prize_type"].items()) or "none"
    lines.append(f"grants by prize type: {by_type}")
    pts = doc["points"]
    lines.append(f"points outstanding: {pts['outstanding']:,} (liability {_money(pts['liability_cents'])})")
    env = doc["envelopes"]
    lines.append(f"cash envelopes: pending {_money(env['pending_cents'])}, available {_money(env['available_cents'])},"
                 f" withdrawn {_money(env['withdrawn_cents'])}")
    return "\n".join(lines)


def _rewards(args: argparse.Namespace) -> int:
    with _engine(args) as (_, engine):
        doc = engine.report(_now_ms(args.as_of))
    print(orjson.dumps(doc).decode() if args.json else render_report(doc))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    as_of_help = "evaluate as of this RFC 3339 time (default now): expiries, pending envelopes"
    code = sub.add_parser("code", help="universal codes (NEW666): claim one for a user")
    code_sub = code.add_subparsers(dest="code_command", required=True, metavar="ACTION")
    claim = code_sub.add_parser(
        "claim", help="hand the user one unissued coupon behind CODE",
        description="Exit status: 0 claimed, 3 unknown code, 4 pool exhausted, 5 already claimed, "
                    "6 not granted (campaign inactive, budget used up, out of stock).",
    )
    claim.add_argument("code", metavar="CODE")
    claim.add_argument("--user", required=True, metavar="ID", help="the user claiming the code")
    claim.add_argument("--json", action="store_true", help="one JSON object (also when refused)")
    claim.add_argument("--as-of", metavar="RFC3339", help="claim time (default now)")
    claim.set_defaults(func=_claim)

    wallet = sub.add_parser("wallet", help="a user's coupons, points (with expiries) and cash envelopes")
    wallet.add_argument("user_id", metavar="ID")
    wallet.add_argument("--json", action="store_true", help="one JSON object")
    wallet.add_argument("--as-of", metavar="RFC3339", help=as_of_help)
    wallet.set_defaults(func=_wallet)

    rewards = sub.add_parser("rewards", help="campaign budgets, inventory, grants, points liability, envelopes")
    rewards.add_argument("--json", action="store_true", help="one JSON object")
    rewards.add_argument("--as-of", metavar="RFC3339", help=as_of_help)
    rewards.set_defaults(func=_rewards)
