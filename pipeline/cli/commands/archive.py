"""`tierflow migrate`, `tierflow aipl`, `tierflow dashboard`: the ClickHouse archive
from the command line.

Embedded chDB lets one process at a time open its data directory. While another
process (a worker, or `tierflow dashboard`) owns it, `aipl` and the dashboard read
through that process (pipeline/archive/remote.py) and `migrate` reports the schema
the owner applied.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from typing import Any

import orjson

from tierflow.pipeline.archive import aipl
from tierflow.pipeline.archive.backend import ArchiveBusy, ArchiveUnavailable, open_backend
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.archive.migrate import MigrationError, migrate
from tierflow.pipeline.archive.remote import add_sql_route
from tierflow.pipeline.cli.errors import CliError
from tierflow.pipeline.config.context import from_args


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from exc


def unavailable(exc: ArchiveUnavailable | MigrationError) -> CliError:
    """The one-line error for an archive that cannot be read."""
    if isinstance(exc, ArchiveBusy):
        return CliError(f"{exc}, which does not answer reads (not a tierflow worker or dashboard,"
                        " or one still starting): try again, or stop it", 1)
    return CliError(str(exc), 1)


def _migrate(args: argparse.Namespace) -> int:
    ctx = from_args(args)
    try:
        backend = open_backend(ctx.settings, ctx.config.archive)
    except ArchiveBusy:
        return _owner_migrated(Archive(ctx.settings, ctx.config.archive))
    except ArchiveUnavailable as exc:
        raise unavailable(exc) from exc
    try:
        done = migrate(backend, run=not args.record_only)
    except (ArchiveUnavailable, MigrationError) as exc:
        raise unavailable(exc) from exc
    finally:
        backend.close()
    if done:
        for m in done:
            print(f"{'recorded' if args.record_only else 'applied'} {m.version:03d}_{m.name}")
    else:
        print(f"{backend.display}: schema up to date")
    return 0


def _owner_migrated(archive: Archive) -> int:
    """Another process owns the embedded archive: it migrated it when it opened it."""
    try:
        where = archive.reader().display
        versions = archive.migrations()
    except (ArchiveUnavailable, MigrationError) as exc:
        raise unavailable(exc) from exc
    print(f"{where} owns the archive and migrated it: "
          f"schema versions {', '.join(f'{v:03d}' for v in versions)}")
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
        doc = aipl.report(archive.reader(), args.start, args.end, args.by)
    except (ArchiveUnavailable, MigrationError) as exc:
        raise unavailable(exc) from exc
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
        where = archive.reader().display  # owns the archive now, or reads through its owner
    except (ArchiveUnavailable, MigrationError) as exc:
        raise unavailable(exc) from exc
    app = build_app(archive, ctx.config, host=host, token=token)
    add_sql_route(app.router, archive)
    archive.serve_reads(host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"dashboard at http://{shown}:{port}/dashboard/ reading {where}"
          + (" (log in with TIERFLOW_DASHBOARD_TOKEN)" if token else ""), flush=True)
    try:
        # No access log: a request line can carry what a user pasted into a URL.
        web.run_app(app, host=host, port=port, print=None, handle_signals=True, access_log=None)
    finally:
        archive.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("migrate", help="create or upgrade the ClickHouse archive schema")
    parser.add_argument("--record-only", action="store_true",
                        help="record the pending migrations as applied without running them, for a"
                             " schema created by hand (a ClickHouse cluster: docs/bi.md)")
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
