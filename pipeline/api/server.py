"""The app API's routes (an aiohttp application, served by `tierflow api`).

    GET  /api/v1/customers/{user_id}/tiers          state and tiers, as `tierflow user --json`
    GET  /api/v1/customers/{user_id}/wallet         coupons, points, envelopes, as `tierflow wallet --json`
    POST /api/v1/customers/{user_id}/codes/claim    {"code"}: as `tierflow code claim --json`
    POST /api/v1/customers/{user_id}/points/redeem  {"points", "reference"?}: spend points
    POST /api/v1/customers/{user_id}/withdrawals    {"amount_cents"}: withdraw available envelope money
    PUT  /api/v1/customers/{user_id}/address        {"address"}: prizes waiting for one become ready
    GET  /api/openapi.json                           the OpenAPI 3 document of these routes

Every route needs `Authorization: Bearer <TIERFLOW_DASHBOARD_TOKEN>` when the token
is set (no session cookie: apps are not browsers), and without one the server
refuses to bind anything but loopback, like the dashboard. Each client (the token
it presented and its address) is rate-limited; every write needs an
Idempotency-Key (idempotency.py). The writes run the reward engine's own functions,
so the rules, the once-only guarantees and the refusal reasons are the CLI's; what
they write reaches `reward.grants` through the worker's outbox like the CLI's.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import orjson
import redis
from aiohttp import web

from tierflow.pipeline.api.idempotency import Answer, IdempotencyStore, fingerprint
from tierflow.pipeline.api.limits import RateLimiter
from tierflow.pipeline.api.settings import ApiSettings
from tierflow.pipeline.cli.commands.rewards import claim_document
from tierflow.pipeline.cli.commands.user import user_document
from tierflow.pipeline.cli.errors import CliError
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.dashboard.server import is_loopback
from tierflow.pipeline.errors import ConfigError
from tierflow.pipeline.lua import Redis
from tierflow.pipeline.rewards.engine import RewardEngine
from tierflow.pipeline.rewards.wallet import RewardError

log = logging.getLogger("tierflow.api")

PREFIX = "/api/v1/customers/{user_id}"
OPENAPI_PATH = "/api/openapi.json"
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
UNKNOWN_USER = 4  # `tierflow user` exits 4 for an id no event was applied for

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
Clock = Callable[[], int]


class ClaimBody(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[Text, msgspec.Meta(description="The public code the customer typed (case-insensitive).")]


class RedeemBody(msgspec.Struct, forbid_unknown_fields=True):
    points: Annotated[Positive, msgspec.Meta(description="Points to spend, soonest-expiring first.")]
    reference: Annotated[Text | None, msgspec.Meta(
        description="What the points pay for (an order id): spent once per reference. Default: the Idempotency-Key."
    )] = None


class WithdrawBody(msgspec.Struct, forbid_unknown_fields=True):
    amount_cents: Annotated[Positive, msgspec.Meta(description="Available envelope money to withdraw, in cents.")]


class AddressBody(msgspec.Struct, forbid_unknown_fields=True):
    address: Annotated[Text, msgspec.Meta(description="Where physical prizes are shipped.")]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    body: type[msgspec.Struct] | None
    responses: dict[int, str]

    @property
    def writes(self) -> bool:
        return self.method != "GET"


_READ = {200: "the document", 401: "no valid token", 429: "rate limited"}
_WRITE = {**_READ, 400: "no Idempotency-Key",
          409: "refused: see status and error, or the key's first request still runs",
          422: "an invalid body, or an Idempotency-Key reused with another request"}
ROUTES = (
    Route("GET", f"{PREFIX}/tiers", "The customer's state and tiers (as `tierflow user --json`)", None,
          {**_READ, 404: "no events were applied for this customer"}),
    Route("GET", f"{PREFIX}/wallet", "The customer's coupons, points and envelopes (as `tierflow wallet --json`)",
          None, _READ),
    Route("POST", f"{PREFIX}/codes/claim", "Claim a public code (as `tierflow code claim --json`)", ClaimBody,
          {**_WRITE, 200: "claimed", 404: "unknown code",
           409: "not granted: status exhausted, already_claimed, inactive, budget_exhausted, out_of_stock, limit"
                " or held_out"}),
    Route("POST", f"{PREFIX}/points/redeem", "Spend points", RedeemBody,
          {**_WRITE, 200: "spent", 409: "refused (not enough points) or the reference was spent before"}),
    Route("POST", f"{PREFIX}/withdrawals", "Withdraw available cash-envelope money", WithdrawBody,
          {**_WRITE, 200: "withdrawn", 409: "refused (below the minimum, not enough available)"}),
    Route("PUT", f"{PREFIX}/address", "Give the delivery address for physical prizes", AddressBody,
          {**_WRITE, 200: "saved; the prizes it made ready to ship"}),
)


def openapi(routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes` (bodies' schemas from their msgspec types)."""
    bodies = [r.body for r in routes if r.body is not None]
    schemas, components = msgspec.json.schema_components(bodies, ref_template="#/components/schemas/{name}")
    paths: dict[str, dict[str, Any]] = {}
    for route, schema in zip([r for r in routes if r.body], schemas, strict=True):
        paths.setdefault(route.path, {})[route.method.lower()] = {"requestBody": {
            "required": True, "content": {"application/json": {"schema": schema}}}}
    for route in routes:
        params = [{"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"}}]
        if route.writes:
            params.append({"name": IDEMPOTENCY_HEADER, "in": "header", "required": True,
                           "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
                           "description": "Same key and body: the same answer, no second effect."})
        operation = paths.setdefault(route.path, {}).setdefault(route.method.lower(), {})
        operation.update({
            "summary": route.summary, "parameters": params,
            "responses": {str(code): {"description": text, "content": {"application/json": {}}}
                          for code, text in sorted(route.responses.items())},
        })
    return {
        "openapi": "3.1.0",
        "info": {"title": "tierflow app API", "version": "1"},
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {**paths, OPENAPI_PATH: {"get": {"summary": "This document", "responses": {
            "200": {"description": "the OpenAPI document", "content": {"application/json": {}}}}}}},
    }


def _json(doc: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store", **(headers or {})})


def _presented(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[len("Bearer "):].strip() if header.startswith("Bearer ") else ""


def caller(request: web.Request) -> str:
    """Who is asking: a digest of the token presented (never the token), "-" for none."""
    token = _presented(request)
    return hashlib.sha256(token.encode()).hexdigest()[:32] if token else "-"


class Api:
    def __init__(self, ctx: Context, client: Redis, api: ApiSettings, clock: Clock) -> None:
        self.ctx, self.client, self.clock = ctx, client, clock
        self.engine = RewardEngine(client, ctx.config.rewards)
        self.keys = IdempotencyStore(client, api.idempotency_ttl_s, api.idempotency_lock_s)

    # --- reads ---------------------------------------------------------------------

    def tiers(self, user_id: str) -> Answer:
        try:
            return Answer(200, user_document(self.ctx, user_id, self.clock(), self.client))
        except CliError as exc:
            return Answer(404 if exc.status == UNKNOWN_USER else 400, {"error": str(exc)})

    def wallet(self, user_id: str) -> Answer:
        return Answer(200, self.engine.wallet(user_id, self.clock()))

    # --- writes: the engine's functions, their refusals as 409 -----------------------

    def claim(self, user_id: str, body: ClaimBody, _key: str) -> Answer:
        result = self.engine.claim_code(body.code, user_id, self.clock())
        doc = claim_document(body.code, user_id, result)
        return Answer({"granted": 200, "unknown_code": 404}.get(result.status, 409), doc)

    def redeem(self, user_id: str, body: RedeemBody, key: str) -> Answer:
        ref = body.reference or _reference(user_id, key)
        return _once(lambda: self.engine.spend_points(user_id, body.points, ref, self.clock()), "redeemed", ref)

    def withdraw(self, user_id: str, body: WithdrawBody, key: str) -> Answer:
        ref = _reference(user_id, key)
        return _once(lambda: self.engine.withdraw(user_id, body.amount_cents, ref, self.clock()), "withdrawn", ref)

    def address(self, user_id: str, body: AddressBody, _key: str) -> Answer:
        try:
            ready = self.engine.set_address(user_id, body.address, self.clock())
        except RewardError as exc:
            return Answer(422, {"status": "refused", "error": str(exc)})
        return Answer(200, {"status": "saved", "ready": msgspec.to_builtins(ready)})


def _reference(user_id: str, key: str) -> str:
    """A write's reference from its Idempotency-Key: records are named after their
    reference, and one app's keys may repeat across customers."""
    return f"api:{user_id}:{key}"


def _once(write: Callable[[], Any], done: str, ref: str) -> Answer:
    """A write once per reference: its record, or why not."""
    try:
        record = write()
    except RewardError as exc:
        return Answer(409, {"status": "refused", "error": str(exc)})
    if record is None:
        return Answer(409, {"status": "duplicate_reference", "error": f"reference {ref!r} was used before"})
    return Answer(200, {"status": done, "record": msgspec.to_builtins(record)})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _reader(read: Callable[[str], Answer]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        answer = await asyncio.to_thread(read, request.match_info["user_id"])
        return _json(answer.body, answer.status)

    return handle


def _writer(store: IdempotencyStore, body_type: type[msgspec.Struct],
            write: Callable[[str, Any, str], Answer]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        key = request.headers.get(IDEMPOTENCY_HEADER, "").strip()
        if not key or len(key) > MAX_KEY_LENGTH:
            return _json({"error": f"every write needs an {IDEMPOTENCY_HEADER} header"
                                   f" (1 to {MAX_KEY_LENGTH} characters)"}, 400)
        raw = await request.read()
        try:
            body = msgspec.json.decode(raw, type=body_type)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return _json({"error": f"body: {exc}"}, 422)
        user_id = request.match_info["user_id"]
        print_ = fingerprint(request.method, request.path, msgspec.to_builtins(body))
        # The key is the caller's: its scope is the token presented and the customer.
        scope = f"{caller(request)}\0{user_id}"
        answer = await asyncio.to_thread(store.run, scope, key, print_, lambda: write(user_id, body, key))
        if answer == "mismatch":
            return _json({"error": f"{IDEMPOTENCY_HEADER} {key!r} was used with another request"}, 422)
        if answer == "in_progress":
            return _json({"error": f"the first request with {IDEMPOTENCY_HEADER} {key!r} is still running"},
                         409, {"Retry-After": "1"})
        assert isinstance(answer, Answer)
        return _json(answer.body, answer.status, {"Idempotent-Replayed": "true"} if answer.replayed else None)

    return handle


def _guard(token: str | None, limiter: RateLimiter) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Limited before the token is checked, so guessing tokens is limited too.
        wait = limiter.wait_s(f"{caller(request)}@{request.remote}", time.monotonic())
        if wait:
            return _json({"error": "too many requests"}, 429, {"Retry-After": str(max(1, round(wait)))})
        if token is not None and not hmac.compare_digest(_presented(request).encode(), token.encode()):
            return _json({"error": "a valid token is required (Authorization: Bearer <token>)"}, 401,
                         {"WWW-Authenticate": "Bearer"})
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except redis.RedisError as exc:
            log.warning("api request %s: Redis: %s", request.path, exc)
            return _json({"error": "Redis is unavailable; try again"}, 503, {"Retry-After": "1"})
        except Exception:
            log.exception("api request %s failed", request.path)
            return _json({"error": "internal error; see the server log"}, 500)

    return guard


def build_app(ctx: Context, client: Redis, api: ApiSettings, *, host: str,
              clock: Clock | None = None) -> web.Application:
    """Refuses a non-loopback `host` without TIERFLOW_DASHBOARD_TOKEN (ConfigError)."""
    token = ctx.settings.dashboard_token
    if token is None and not is_loopback(host):
        raise ConfigError(f"refusing to serve the app API on {host} without TIERFLOW_DASHBOARD_TOKEN:"
                          " set one (a long random string), or bind a loopback address")
    app = web.Application(middlewares=[_guard(token, RateLimiter(api.rate_per_s, api.burst))])
    service = Api(ctx, client, api, clock or (lambda: int(time.time() * 1000)))
    reads = {"tiers": service.tiers, "wallet": service.wallet}
    writes = {"codes/claim": service.claim, "points/redeem": service.redeem, "withdrawals": service.withdraw,
              "address": service.address}
    for route in ROUTES:
        name = route.path.removeprefix(PREFIX + "/")
        handler = _reader(reads[name]) if route.body is None else _writer(service.keys, route.body, writes[name])
        app.router.add_route(route.method, route.path, handler)
    document = openapi()

    async def serve_openapi(_request: web.Request) -> web.StreamResponse:
        return _json(document)

    app.router.add_get(OPENAPI_PATH, serve_openapi)
    return app
