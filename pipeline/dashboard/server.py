"""The AIPL dashboard: one page of charts and the JSON endpoints beside it.

`add_routes(router, ...)` mounts it on any aiohttp router: the Faust worker's
web server (``app.web.web_app.router``) or the standalone app that
`tierflow dashboard` runs (`build_app`). Routes:

  GET /dashboard/                 the page (static/index.html; charts drawn by its own JS)
  GET /dashboard/static/{file}    the page's script and style sheet (no data, no token)
  GET /api/aipl?from&to&by        funnel counts and rates, or one funnel per channel|category
  GET /api/aipl/trend?from&to     one funnel per ISO week
  GET /api/tiers?to               users per current segment / lifecycle / membership / aipl
  GET /api/segments/migration?from&to&dimension   net moves between values of a dimension
  GET /api/rewards?from&to        per campaign: budget charged against budget, grants, redemptions
  GET /api/archive/status         backend, schema version, row counts, the writer's state

Dates are YYYY-MM-DD (UTC days, inclusive); open ends default to the
archive's first/last day. The page and every /api route require the token
(``Authorization: Bearer <TIERFLOW_DASHBOARD_TOKEN>`` or ``?token=``)
whenever one is configured, and always when bound to anything but loopback;
bound publicly without a token configured they refuse every request.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any, cast

import orjson
from aiohttp import web

from tierflow.pipeline.archive import aipl, reports
from tierflow.pipeline.archive.backend import ArchiveUnavailable, Backend
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.config.domain import Config

log = logging.getLogger("tierflow.dashboard")

STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = {"dashboard.js": "application/javascript", "dashboard.css": "text/css"}
DIMENSIONS = ("segment", "lifecycle", "membership", "aipl")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
StatusSource = Callable[[], Mapping[str, Any]]


class BadRequest(ValueError):
    """A query parameter the endpoint cannot use."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from elsewhere


def needs_token(host: str, token: str | None) -> bool:
    """The access rule: a configured token is always required; off loopback one must exist."""
    return token is not None or not is_loopback(host)


def presented_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer "):].strip()
    return request.query.get("token")


def guard(handler: Handler, host: str, token: str | None) -> Handler:
    if not needs_token(host, token):
        return handler

    async def checked(request: web.Request) -> web.StreamResponse:
        if token is None:
            message = f"the dashboard is bound to {host}: set TIERFLOW_DASHBOARD_TOKEN"
            return _json({"error": message}, status=403)
        given = presented_token(request)
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            return _json({"error": "a valid token is required (Authorization: Bearer <token>)"},
                         status=401, headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return checked


def _json(doc: object, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(doc), status=status, content_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def parse_day(text: str | None, name: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise BadRequest(f"{name}: expected YYYY-MM-DD, got {text!r}") from exc


def period_of(request: web.Request) -> tuple[date | None, date | None]:
    start = parse_day(request.query.get("from"), "from")
    end = parse_day(request.query.get("to"), "to")
    if start and end and end < start:
        raise BadRequest("to is before from")
    return start, end


def campaign_budgets(config: Config) -> dict[str, int | None]:
    """Budgets of the enabled campaigns in the [rewards] section, when the config has one."""
    rewards = getattr(config, "rewards", None)  # the section belongs to the reward engine
    if rewards is None:
        return {}
    return {cid: c.budget_cents for cid, c in rewards.campaigns.items() if c.enabled}


class Endpoints:
    """Each endpoint: parse the query (pure), run the report in a thread (blocking I/O)."""

    def __init__(self, archive: Archive, config: Config, status: StatusSource | None) -> None:
        self.archive = archive
        self.config = config
        self.status_source = status

    async def _run(self, request: web.Request, report: Callable[[Backend], object]) -> web.Response:
        try:
            return _json(await asyncio.to_thread(lambda: report(self.archive.backend())))
        except ArchiveUnavailable as exc:
            return _json({"error": str(exc)}, status=503)

    async def aipl(self, request: web.Request) -> web.Response:
        start, end = period_of(request)
        by = request.query.get("by") or None
        if by is not None and by not in aipl.BREAKDOWNS:
            raise BadRequest(f"by: one of {', '.join(aipl.BREAKDOWNS)}")
        choice = cast(aipl.Breakdown | None, by)
        return await self._run(request, lambda b: aipl.report(b, start, end, choice))

    async def trend(self, request: web.Request) -> web.Response:
        start, end = period_of(request)
        return await self._run(request, lambda b: aipl.trend_report(b, start, end))

    async def tiers(self, request: web.Request) -> web.Response:
        _, end = period_of(request)

        def report(backend: Backend) -> object:
            found = reports.tier_distribution(backend, end)
            return {"to": end.isoformat() if end else None,
                    "dimensions": {d: found.get(d, {}) for d in (*DIMENSIONS, *found)}}

        return await self._run(request, report)

    async def migration(self, request: web.Request) -> web.Response:
        start, end = period_of(request)
        dimension = request.query.get("dimension", "segment")
        if dimension not in DIMENSIONS:
            raise BadRequest(f"dimension: one of {', '.join(DIMENSIONS)}")

        def report(backend: Backend) -> object:
            period = aipl.resolve(backend, start, end)
            flows = reports.segment_migration(backend, period, dimension) if period else []
            return {"dimension": dimension, "from": period.start.isoformat() if period else None,
                    "to": period.end.isoformat() if period else None, "flows": flows}

        return await self._run(request, report)

    async def rewards(self, request: web.Request) -> web.Response:
        start, end = period_of(request)
        period = aipl.Period(start, end) if start and end else None
        if (start is None) != (end is None):
            raise BadRequest("rewards: give both from and to, or neither (all time)")
        budgets = campaign_budgets(self.config)
        return await self._run(request, lambda b: reports.rewards_summary(b, period, budgets))

    async def status(self, request: web.Request) -> web.Response:
        def report(backend: Backend) -> object:
            return {**reports.archive_summary(backend), "migrations": self.archive.migrations(),
                    "writer": dict(self.status_source()) if self.status_source else None}

        return await self._run(request, report)


def _errors(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as exc:
            return _json({"error": str(exc)}, status=400)
        except Exception:
            log.exception("dashboard request %s failed", request.path_qs)
            return _json({"error": "internal error; see the worker log"}, status=500)

    return wrapped


async def _page(_request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})


async def _static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC_DIR / name, headers={"Content-Type": STATIC_FILES[name]})


async def _to_page(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dashboard/" + (f"?{request.query_string}" if request.query_string else ""))


def add_routes(
    router: web.UrlDispatcher, archive: Archive, config: Config, *, host: str,
    token: str | None, status: StatusSource | None = None,
) -> None:
    """Mount the page and the JSON API on `router` (call before the server starts).
    `host` is the address the server binds, which decides whether a token is required."""
    if needs_token(host, token) and token is None:
        log.error("dashboard bound to %s without TIERFLOW_DASHBOARD_TOKEN: every request is"
                  " refused", host)
    api = Endpoints(archive, config, status)

    def protect(handler: Handler) -> Handler:
        return guard(_errors(handler), host, token)

    router.add_get("/dashboard", _to_page)
    router.add_get("/dashboard/", protect(_page))
    router.add_get("/dashboard/static/{name}", _static)
    router.add_get("/api/aipl", protect(api.aipl))
    router.add_get("/api/aipl/trend", protect(api.trend))
    router.add_get("/api/tiers", protect(api.tiers))
    router.add_get("/api/segments/migration", protect(api.migration))
    router.add_get("/api/rewards", protect(api.rewards))
    router.add_get("/api/archive/status", protect(api.status))


def build_app(
    archive: Archive, config: Config, *, host: str, token: str | None,
    status: StatusSource | None = None,
) -> web.Application:
    """The standalone dashboard app (`tierflow dashboard`): the routes plus / -> the page."""
    app = web.Application()
    app.router.add_get("/", _to_page)
    add_routes(app.router, archive, config, host=host, token=token, status=status)
    return app
