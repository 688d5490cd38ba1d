"""`tierflow migrate`, `tierflow aipl`, `tierflow dashboard`: the ClickHouse archive
from the command line.

Embedded chDB lets one process at a time open its data directory. While a
worker holds it, `aipl` reads the same numbers through the worker's JSON API
and `migrate` reports the schema the worker applied when it started;
`dashboard` points at the worker, which already serves the page.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from datetime import date
from typing import Any
from urllib.parse import urlencode

import orjson

from tierflow.pipeline.archive import aipl
from tierflow.pipeline.archive.backend import ArchiveBusy, ArchiveUnavailable, open_backend
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.archive.migrate import MigrationError, migrate
from tierflow.pipeline.cli.errors import CliError
from tierflow.pipeline.config.context import Context, from_args


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from exc


def worker_url(ctx: Context, path: str, query: dict[str, str]) -> str:
    host = ctx.settings.web_host
    if host in ("0.0.0.0", "::", ""):  # bound everywhere: reach it on loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    qs = f"?{urlencode(query)}" if query else ""
    return f"http://{host}:{ctx.settings.web_port}{path}{qs}"


def ask_worker(ctx: Context, busy: ArchiveBusy, path: str, query: dict[str, str]) -> Any:
    """GET a JSON endpoint of the worker that holds the chDB directory."""
    url = worker_url(ctx, path, query)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if ctx.settings.dashboard_token:
        request.add_header("Authorization", f"Bearer {ctx.settings.dashboard_token}")
    try:
        with urllib.request.urlopen(request, timeout=ctx.config.archive.worker_api_timeout_s) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise CliError(f"{busy}; the worker at {url} answered {exc.code}: {detail}", 1) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(
            f"{busy}, and no worker answers at {worker_url(ctx, '', {})} ({exc}). "
            "Stop the process that holds it, or set TIERFLOW_WEB_HOST/TIERFLOW_WEB_PORT "
            "to the worker's address.", 1,
        ) from exc


def _migrate(args: argparse.Namespace) -> int:
    ctx = from_args(args)
    try:
        backend = open_backend(ctx.settings, ctx.config.archive)
    except ArchiveBusy as busy:
        status = ask_worker(ctx, busy, "/api/archive/status", {})
        versions = status.get("migrations", [])
        print(f"the running worker holds {busy.path} and migrated it at start: "
              f"schema versions {', '.join(f'{v:03d}' for v in versions)}")
        return 0
    try:
        done = migrate(backend)
    except (ArchiveUnavailable, MigrationError) as exc:
        raise CliError(str(exc), 1) from exc
    finally:
        backend.close()
    if done:
        for m in done:
            print(f"applied {m.version:03d}_{m.name}")
    else:
        print(f"{backend.display}: schema up to date")
    return 0


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:6.2f}%"


def render(doc: dict[str, Any], by: str | None) -> str:
    stages = ("awareness", "interest", "purchase", "loyalty")
    if by is None:
        rates = doc["rates"]
        arrows = ("", f"A->I {_fmt_rate(rates['a_to_i'])}", f"I->P {_fmt_rate(rates['i_to_p'])}",
                  f"P->L {_fmt_rate(rates['p_to_l'])}")
        return "\n".join(f"{s:<10} {doc[s]:>12,}   {a}".rstrip() for s, a in zip(stages, arrows,
                                                                                  strict=True))
    head = f"{by:<20} {'aware':>10} {'interest':>10} {'purchase':>10} {'loyal':>10}" \
           f" {'A->I':>8} {'I->P':>8} {'P->L':>8}"
    lines = [head]
    for group, f in doc.items():
        r = f["rates"]
        lines.append(
            f"{group:<20} {f['awareness']:>10,} {f['interest']:>10,} {f['purchase']:>10,}"
            f" {f['loyalty']:>10,} {_fmt_rate(r['a_to_i']):>8} {_fmt_rate(r['i_to_p']):>8}"
            f" {_fmt_rate(r['p_to_l']):>8}"
        )
    return "\n".join(lines)


def _aipl(args: argparse.Namespace) -> int:
    ctx = from_args(args)
    if args.start and args.end and args.end < args.start:
        raise CliError("--to is before --from", 2)
    archive = Archive(ctx.settings, ctx.config.archive)
    try:
        doc = aipl.report(archive.backend(), args.start, args.end, args.by)
    except ArchiveBusy as busy:
        query = {k: v for k, v in (("from", args.start), ("to", args.end), ("by", args.by)) if v}
        doc = ask_worker(ctx, busy, "/api/aipl", {k: str(v) for k, v in query.items()})
    except (ArchiveUnavailable, MigrationError) as exc:
        raise CliError(str(exc), 1) from exc
    finally:
        archive.close()
    if args.json:
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    else:
        print(render(doc, args.by))
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from aiohttp import web

    from tierflow.pipeline.dashboard.server import build_app, check_binding

    ctx = from_args(args)
    host = args.host or ctx.settings.web_host
    port = args.port or ctx.settings.web_port
    token = ctx.settings.dashboard_token
    check_binding(host, token)  # before opening anything
    archive = Archive(ctx.settings, ctx.config.archive)
    try:
        archive.backend()
    except ArchiveBusy as busy:
        raise CliError(
            f"{busy}: a running worker already serves the dashboard at "
            f"{worker_url(ctx, '/dashboard/', {})}", 1,
        ) from busy
    except (ArchiveUnavailable, MigrationError) as exc:
        raise CliError(str(exc), 1) from exc
    app = build_app(archive, ctx.config, host=host, token=token)
    shown = f"[{host}]" if ":" in host else host
    print(f"dashboard at http://{shown}:{port}/dashboard/"
          + (" (log in with TIERFLOW_DASHBOARD_TOKEN)" if token else ""), flush=True)
    try:
        # No access log: a request line can carry what a user pasted into a URL.
        web.run_app(app, host=host, port=port, print=None, handle_signals=True, access_log=None)
    finally:
        archive.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("migrate", help="create or upgrade the ClickHouse archive schema")
    parser.set_defaults(func=_migrate)

    parser = sub.add_parser(
        "aipl", help="AIPL funnel counts and conversion rates from the archive",
        description="Counts of aware, interested, purchasing and loyal users in a period of UTC"
                    " days (both ends inclusive; default: everything archived) and the rates"
                    " A->I, I->P, P->L. Definitions: docs/aipl.md.",
    )
    parser.add_argument("--from", dest="start", type=_day, metavar="DATE", help="first day")
    parser.add_argument("--to", dest="end", type=_day, metavar="DATE", help="last day")
    parser.add_argument("--by", choices=aipl.BREAKDOWNS, help="one funnel per channel or category")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_aipl)

    parser = sub.add_parser("dashboard", help="serve the AIPL dashboard (without a worker)")
    parser.add_argument("--host", help="bind address (default $TIERFLOW_WEB_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default $TIERFLOW_WEB_PORT, 6066)")
    parser.set_defaults(func=_dashboard)
