"""The AIPL dashboard: one page of charts and the JSON endpoints beside it.

`add_routes(router, ...)` mounts it on any aiohttp router: the Faust worker's
web server (``app.web.web_app.router``) or the standalone app that
`tierflow dashboard` runs (`build_app`). Routes:

  GET /dashboard/                 the page (static/index.html; charts drawn by its own JS)
  GET /dashboard/static/{file}    the page's script and style sheet (no data, no token)
  GET /api/aipl?from&to&by        funnel counts and rates, or one funnel per channel|category
  GET /api/aipl/trend?from&to     one funnel per ISO week (partial weeks flagged)
  GET /api/sales?from&to          revenue, orders, average order value; against the previous
                                  period of the same length; per domain and week
  GET /api/products?from&to       one funnel per product category (no membership/service SKUs)
  GET /api/domains?from&to        one funnel per domain (public / private, [dashboard] channels)
  GET /api/tiers?to               users per current segment / lifecycle / membership / aipl
  GET /api/tiers/domains?to&dimension   users per current value, by the domains they were seen in
  GET /api/segments/migration?from&to&dimension   net moves between values of a dimension
  GET /api/rewards?from&to        per campaign: budget charged against budget, grants, redemptions
                                  (no period: all time)
  GET /api/uplift?days            per campaign with a control group: purchase rate and revenue per
                                  customer after assignment, treated against control, with 95%
                                  intervals (uplift.py); days: only that many days after it
  GET /api/dashboard/config       the page's refresh interval and channel map
  GET /api/archive/status         backend, schema version, row counts, the writer's state
  GET /api/export/{panel}.csv?... one panel's numbers as CSV (the same query as its JSON)

Dates are YYYY-MM-DD (UTC days, inclusive); open ends default to the
archive's first/last day.

Access (`protect`): with TIERFLOW_DASHBOARD_TOKEN set, every route of the
server (the worker's Faust routes included) needs either the header
``Authorization: Bearer <token>`` or the session cookie that the login form
(POST /dashboard/login) sets; only the login form and the static files answer
without. A token in the URL is never accepted: URLs end up in access logs and
browser history. Without a token the server must bind loopback: serving
anything else is refused at start (`DashboardError`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from string import Template
from typing import Any, cast

import orjson
from aiohttp import web

from tierflow.pipeline.archive import aipl, reports
from tierflow.pipeline.archive.backend import ArchiveUnavailable, Backend
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.config.domain import Config
from tierflow.pipeline.dashboard import export, queries, uplift
from tierflow.pipeline.errors import ConfigError

log = logging.getLogger("tierflow.dashboard")

STATIC_DIR = Path(__file__).with_name("static")
STATIC_PREFIX = "/dashboard/static/"
LOGIN_PATH = "/dashboard/login"
SESSION_COOKIE = "tierflow_session"
SESSION_CONTEXT = b"tierflow dashboard session"
LOGIN_PAGE = Template((STATIC_DIR / "login.html").read_text())
# The worker's health probe (agents/health.py) answers without a token: load balancers
# rarely send one, and it tells only which services are up.
HEALTH_PATH = "/healthz"
PUBLIC_ROUTES = frozenset({LOGIN_PATH, STATIC_PREFIX + "{name}", HEALTH_PATH})
STATIC_FILES = {"dashboard.js": "application/javascript", "dashboard.css": "text/css"}
DIMENSIONS = ("segment", "lifecycle", "membership", "aipl")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
StatusSource = Callable[[], Mapping[str, Any]]


class BadRequest(ValueError):
    """A query parameter the endpoint cannot use."""


class DashboardError(ConfigError):
    """The dashboard cannot be served as configured."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from elsewhere


def check_binding(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token (rather than start and
    answer every request with an error)."""
    if token is None and not is_loopback(host):
        raise DashboardError(
            f"refusing to serve the dashboard on {host} without TIERFLOW_DASHBOARD_TOKEN:"
            " set one (a long random string), or bind a loopback address"
        )


class Access:
    """Who may pass when a token is configured: a request carrying it in the
    Authorization header, or the session cookie derived from it."""

    def __init__(self, token: str) -> None:
        self.token = token
        # The cookie holds an HMAC of the token, never the token itself; a new token
        # ends every session.
        self.session = hmac.new(token.encode(), SESSION_CONTEXT, hashlib.sha256).hexdigest()

    def allows(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return _same(header[len("Bearer "):].strip(), self.token)
        cookie = request.cookies.get(SESSION_COOKIE)
        return cookie is not None and _same(cookie, self.session)

    @staticmethod
    def is_public(request: web.Request) -> bool:
        """The login form and the static files, judged by the route the router chose
        (not by the path's text, which encoded slashes and dots can bend)."""
        resource = request.match_info.route.resource
        return resource is not None and resource.canonical in PUBLIC_ROUTES

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.allows(request) or self.is_public(request):
            return await handler(request)
        if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
            raise web.HTTPSeeOther(LOGIN_PATH)  # a browser: to the login form
        return _json({"error": "a valid token is required (Authorization: Bearer <token>,"
                               f" or log in at {LOGIN_PATH})"},
                     status=401, headers={"WWW-Authenticate": "Bearer"})

    async def login_form(self, _request: web.Request) -> web.StreamResponse:
        return _login_page("")

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        given = form.get("token")
        if not isinstance(given, str) or not _same(given, self.token):
            return _login_page("That token is not valid.", status=401)
        signed_in = web.HTTPSeeOther("/dashboard/")
        signed_in.set_cookie(SESSION_COOKIE, self.session, path="/", httponly=True,
                             samesite="Strict", secure=request.secure)
        raise signed_in

    async def logout(self, _request: web.Request) -> web.StreamResponse:
        signed_out = web.HTTPSeeOther(LOGIN_PATH)
        signed_out.del_cookie(SESSION_COOKIE, path="/")
        raise signed_out


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _login_page(message: str, status: int = 200) -> web.Response:
    page = LOGIN_PAGE.substitute(message=html.escape(message))
    return web.Response(text=page, status=status, content_type="text/html",
                        headers={"Cache-Control": "no-store"})


def protect(app: web.Application, host: str, token: str | None) -> None:
    """Put every route of `app` behind the token (call before the server starts) and
    add the login form; refuses a non-loopback `host` without a token."""
    check_binding(host, token)
    if token is None:
        return
    access = Access(token)
    app.middlewares.append(access.guard)
    app.router.add_get(LOGIN_PATH, access.login_form)
    app.router.add_post(LOGIN_PATH, access.login)
    app.router.add_post("/dashboard/logout", access.logout)


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


Report = Callable[[Backend], object]
Render = Callable[[web.Request, Any], web.Response]


def _as_json(_request: web.Request, doc: object) -> web.Response:
    return _json(doc)


def _as_csv(panel: str, rows_of: Callable[[Any], export.Rows]) -> Render:
    def render(request: web.Request, doc: object) -> web.Response:
        start, end = period_of(request)
        name = "-".join(["tierflow", panel, *(d.isoformat() for d in (start, end) if d)])
        return web.Response(
            text=export.to_csv(rows_of(doc)), content_type="text/csv", charset="utf-8",
            headers={"Cache-Control": "no-store", "Content-Disposition": f'attachment; filename="{name}.csv"'},
        )

    return render


class Endpoints:
    """Each panel: a report built from the query (pure parsing), run in a thread
    (blocking I/O), served as JSON at /api/<path> and as CSV at /api/export/<panel>.csv."""

    def __init__(self, archive: Archive, config: Config, status: StatusSource | None) -> None:
        self.archive = archive
        self.config = config
        self.status_source = status
        self.domains = queries.Domains.of(config)
        self.skus = queries.non_product_skus(config)

    async def _fetch(self, report: Report) -> object:
        # reader(): this process's archive, or the owner's while another process owns it
        return await asyncio.to_thread(lambda: report(self.archive.reader()))

    def serve(self, build: Callable[[web.Request], Report], render: Render = _as_json, *,
              unavailable: Callable[[], Mapping[str, object]] = dict) -> Handler:
        """`unavailable`: what to add to the 503 answer while the archive cannot be reached."""
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                return render(request, await self._fetch(build(request)))
            except ArchiveUnavailable as exc:
                return _json({"error": str(exc), **unavailable()}, status=503)
        return handler

    def exports(self) -> dict[str, Handler]:
        """/api/export/<panel>.csv: each panel's report, as rows."""
        panels: dict[str, tuple[Callable[[web.Request], Report], Callable[[Any], export.Rows]]] = {
            "funnel": (self.aipl, export.funnel_rows),
            "channels": (lambda r: self.aipl(r, "channel"), export.group_rows),
            "categories": (self.products, export.group_rows),
            "domains": (self.domain_funnels, export.group_rows),
            "trend": (self.trend, export.trend_rows),
            "sales": (self.sales, export.sales_rows),
            "tiers": (self.tiers, export.tier_rows),
            "tier-domains": (self.tier_domains, export.tier_domain_rows),
            "migration": (self.migration, export.migration_rows),
            "rewards": (self.rewards, export.reward_rows),
            "uplift": (self.uplift, export.uplift_rows),
        }
        return {panel: self.serve(build, _as_csv(panel, rows_of)) for panel, (build, rows_of) in panels.items()}

    def aipl(self, request: web.Request, by: str | None = None) -> Report:
        start, end = period_of(request)
        by = by or request.query.get("by") or None
        if by is not None and by not in aipl.BREAKDOWNS:
            raise BadRequest(f"by: one of {', '.join(aipl.BREAKDOWNS)}")
        choice = cast(aipl.Breakdown | None, by)
        return lambda b: aipl.report(b, start, end, choice)

    def trend(self, request: web.Request) -> Report:
        start, end = period_of(request)
        today = _today()

        def report(backend: Backend) -> object:
            doc = aipl.trend_report(backend, start, end)
            if doc["from"] is None:
                return doc
            period = aipl.Period(date.fromisoformat(doc["from"]), date.fromisoformat(doc["to"]))
            weeks = [{**w, "partial": queries.partial_week(date.fromisoformat(w["week"]), period, today)}
                     for w in doc["weeks"]]
            return {**doc, "partial": queries.is_partial(period, today), "weeks": weeks}

        return report

    def sales(self, request: web.Request) -> Report:
        start, end = period_of(request)
        today = _today()
        return lambda b: queries.sales(b, aipl.resolve(b, start, end), self.domains, today)

    def products(self, request: web.Request) -> Report:
        start, end = period_of(request)
        return lambda b: queries.product_categories(b, aipl.resolve(b, start, end), self.skus)

    def domain_funnels(self, request: web.Request) -> Report:
        start, end = period_of(request)
        return lambda b: queries.domain_funnels(b, aipl.resolve(b, start, end), self.domains)

    def tiers(self, request: web.Request) -> Report:
        _, end = period_of(request)

        def report(backend: Backend) -> object:
            found = reports.tier_distribution(backend, end)
            return {"to": end.isoformat() if end else None,
                    "dimensions": {d: found.get(d, {}) for d in (*DIMENSIONS, *found)}}

        return report

    def tier_domains(self, request: web.Request) -> Report:
        _, end = period_of(request)
        dimension = dimension_of(request)

        def report(backend: Backend) -> object:
            known = aipl.resolve(backend, None, end)
            values = queries.tier_domains(backend, known.end, dimension, self.domains) if known else {}
            return {"dimension": dimension, "to": known.end.isoformat() if known else None,
                    "values": values}

        return report

    def migration(self, request: web.Request) -> Report:
        start, end = period_of(request)
        dimension = dimension_of(request)

        def report(backend: Backend) -> object:
            period = aipl.resolve(backend, start, end)
            flows = reports.segment_migration(backend, period, dimension) if period else []
            return {"dimension": dimension, "from": period.start.isoformat() if period else None,
                    "to": period.end.isoformat() if period else None, "flows": flows}

        return report

    def rewards(self, request: web.Request) -> Report:
        """No period: all time; an open end: the archive's first or last day."""
        start, end = period_of(request)
        budgets = campaign_budgets(self.config)

        def report(backend: Backend) -> object:
            period = aipl.resolve(backend, start, end) if start or end else None
            return {**reports.rewards_summary(backend, period, budgets),
                    "from": period.start.isoformat() if period else None,
                    "to": period.end.isoformat() if period else None}

        return report

    def uplift(self, request: web.Request) -> Report:
        days = positive_int(request.query.get("days"), "days")
        rewards = getattr(self.config, "rewards", None)  # the section belongs to the reward engine
        holdouts = {cid: c.holdout_percent for cid, c in rewards.campaigns.items()
                    if c.enabled and c.holdout_percent} if rewards is not None else {}
        return lambda b: uplift.report(b, holdouts, days)

    def settings(self, _request: web.Request) -> Report:
        shown = self.config.dashboard
        doc = {"refresh_s": shown.refresh_s, "non_product_skus": self.skus,
               "domains": {queries.PUBLIC: shown.public_channels, queries.PRIVATE: shown.private_channels,
                           "other": shown.other_domain}}
        return lambda _backend: doc

    def status(self, _request: web.Request) -> Report:
        def report(backend: Backend) -> object:
            return {**reports.archive_summary(backend), "migrations": self.archive.migrations(),
                    "writer": self.writer()}

        return report

    def writer(self) -> dict[str, object] | None:
        return dict(self.status_source()) if self.status_source else None


def _today() -> date:
    return datetime.now(UTC).date()


def positive_int(text: str | None, name: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise BadRequest(f"{name}: expected a whole number from 1, got {text!r}")
    return int(text)


def dimension_of(request: web.Request) -> str:
    dimension = request.query.get("dimension", "segment")
    if dimension not in DIMENSIONS:
        raise BadRequest(f"dimension: one of {', '.join(DIMENSIONS)}")
    return dimension


def _errors(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as exc:
            return _json({"error": str(exc)}, status=400)
        except Exception:
            log.exception("dashboard request %s failed", request.path)
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
    Access is the application's: whoever owns it calls `protect` on it. `host` is the
    address the server binds; without a token, a non-loopback one is refused."""
    check_binding(host, token)
    api = Endpoints(archive, config, status)
    router.add_get("/dashboard", _to_page)
    router.add_get("/dashboard/", _errors(_page))
    router.add_get(STATIC_PREFIX + "{name}", _static)
    routes: dict[str, Callable[[web.Request], Report]] = {
        "aipl": api.aipl, "aipl/trend": api.trend, "sales": api.sales, "products": api.products,
        "domains": api.domain_funnels, "tiers": api.tiers, "tiers/domains": api.tier_domains,
        "segments/migration": api.migration, "rewards": api.rewards, "uplift": api.uplift,
        "dashboard/config": api.settings,
    }
    for path, build in routes.items():
        router.add_get(f"/api/{path}", _errors(api.serve(build)))
    # While the archive cannot be reached the writer's state (holding, why) is the news.
    router.add_get("/api/archive/status", _errors(api.serve(api.status, unavailable=lambda: {"writer": api.writer()})))
    for panel, handler in api.exports().items():
        router.add_get(f"/api/export/{panel}.csv", _errors(handler))


def build_app(
    archive: Archive, config: Config, *, host: str, token: str | None,
    status: StatusSource | None = None,
) -> web.Application:
    """The standalone dashboard app (`tierflow dashboard`): the routes plus / -> the page."""
    app = web.Application()
    protect(app, host, token)
    app.router.add_get("/", _to_page)
    add_routes(app.router, archive, config, host=host, token=token, status=status)
    return app
