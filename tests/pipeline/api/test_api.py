"""The app API against real Redis: every route in the OpenAPI document, the token,
the rate limit, Idempotency-Key on every write (same request: same answer, one effect;
another request: 422), and the same answers and refusal reasons as the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.fixtures.paths import ROOT
from tests.fixtures.worker import read_all, running_worker
from tests.pipeline.rewards.test_ledger import NOW, accept, buy
from tierflow.pipeline.api.limits import RateLimiter
from tierflow.pipeline.api.server import OPENAPI_PATH, build_app
from tierflow.pipeline.api.settings import ApiSettings
from tierflow.pipeline.cli.commands.rewards import claim_document
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.errors import ConfigError
from tierflow.pipeline.rewards.catalogue import DAY_MS
from tierflow.pipeline.rewards.engine import RewardEngine
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.state.summary import encode as encode_event
from tierflow.schemas.events import Interaction

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LATER = NOW + 9 * DAY_MS  # the referral envelopes (8 days pending) are available
Scenario = Callable[[TestClient, RewardEngine], Awaitable[None]]


def context(redis_url: str, token: str | None = TOKEN) -> Context:
    return Context(replace(Settings.from_env(), redis_url=redis_url, dashboard_token=token), load_config())


def serve(redis_url: str, scenario: Scenario, api: ApiSettings | None = None, token: str | None = TOKEN) -> None:
    ctx = context(redis_url, token)
    client = connect(redis_url)

    async def run() -> None:
        app = build_app(ctx, client, api or ApiSettings(), host="127.0.0.1", clock=lambda: LATER)
        async with TestClient(TestServer(app)) as http:
            await scenario(http, RewardEngine(client, ctx.config.rewards))

    try:
        asyncio.run(run())
    finally:
        client.close()


async def call(http: TestClient, method: str, path: str, body: Any = None, key: str | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    sent = {**AUTH, **({"Idempotency-Key": key} if key else {}), **(headers or {})}
    resp = await http.request(method, path, json=body, headers=sent)
    return resp.status, await resp.json(), resp.headers


def test_the_openapi_document_lists_every_route(redis_url: str) -> None:
    async def scenario(http: TestClient, _engine: RewardEngine) -> None:
        status, doc, _ = await call(http, "GET", OPENAPI_PATH)
        assert status == 200 and doc["openapi"].startswith("3.")
        documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
        served = {(r.method, r.resource.canonical) for r in http.app.router.routes()  # type: ignore[union-attr]
                  if r.method != "HEAD"}
        assert documented == served and len(served) == 7
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                needs_key = any(p["name"] == "Idempotency-Key" and p["required"] for p in op.get("parameters", []))
                assert needs_key == (method != "get"), (method, path)

    serve(redis_url, scenario)


def test_every_route_needs_the_token(redis_url: str) -> None:
    async def scenario(http: TestClient, _engine: RewardEngine) -> None:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": "tierflow_session=x"}):
            for method, path in (("GET", OPENAPI_PATH), ("GET", "/api/v1/customers/u1/wallet"),
                                 ("POST", "/api/v1/customers/u1/codes/claim")):
                resp = await http.request(method, path, json={"code": "NEW666"},
                                          headers={**headers, "Idempotency-Key": "k"})
                assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        assert (await call(http, "GET", "/api/v1/customers/u1/wallet"))[0] == 200

    serve(redis_url, scenario)


def test_refuses_to_bind_off_loopback_without_a_token(redis_url: str) -> None:
    client = connect(redis_url)
    try:
        with pytest.raises(ConfigError, match=r"refusing to serve the app API on 0\.0\.0\.0 without"):
            build_app(context(redis_url, None), client, ApiSettings(), host="0.0.0.0")
        build_app(context(redis_url, TOKEN), client, ApiSettings(), host="0.0.0.0")
        build_app(context(redis_url, None), client, ApiSettings(), host="::1")
    finally:
        client.close()
    cli = subprocess.run([sys.executable, "-m", "tierflow.pipeline.cli.main", "api", "--host", "0.0.0.0"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url, "HOME": str(ROOT)})
    assert cli.returncode == 2 and "refusing to serve the app API on 0.0.0.0" in cli.stderr


def test_each_client_is_rate_limited(redis_url: str) -> None:
    async def scenario(http: TestClient, _engine: RewardEngine) -> None:
        statuses = [(await call(http, "GET", "/api/v1/customers/u1/wallet"))[0] for _ in range(3)]
        status, _, headers = await call(http, "GET", "/api/v1/customers/u1/wallet")
        assert statuses == [200, 200, 200] and status == 429 and int(headers["Retry-After"]) >= 1
        # Another token is another client (refused for the token, but not limited).
        other = await http.get("/api/v1/customers/u1/wallet", headers={"Authorization": "Bearer other"})
        assert other.status == 401

    serve(redis_url, scenario, ApiSettings(rate_per_s=1, burst=3))


def test_the_token_bucket_refills_at_the_rate() -> None:
    limiter = RateLimiter(rate_per_s=2, burst=2)
    assert [limiter.wait_s("a", 0.0) for _ in range(3)] == [0, 0, 0.5]
    assert limiter.wait_s("b", 0.0) == 0  # its own bucket
    assert limiter.wait_s("a", 0.5) == 0 and limiter.wait_s("a", 0.5) == 0.5
    assert limiter.wait_s("a", 10.0) == 0  # swept and full again


def test_claim_a_code_once_per_idempotency_key_with_the_cli_answers(redis_url: str) -> None:
    path = "/api/v1/customers/app-u1/codes/claim"

    async def scenario(http: TestClient, engine: RewardEngine) -> None:
        assert (await call(http, "POST", path, {"code": "new666"}))[0] == 400  # no key
        status, first, _ = await call(http, "POST", path, {"code": "new666"}, key="k1")
        assert status == 200 and first["status"] == "granted" and first["coupon"]["item_id"].startswith("NEW666-")
        status, again, headers = await call(http, "POST", path, {"code": "new666"}, key="k1")
        assert (status, again, headers["Idempotent-Replayed"]) == (200, first, "true")
        status, doc, _ = await call(http, "POST", path, {"code": "OTHER"}, key="k1")
        assert status == 422 and "used with another request" in doc["error"]
        # A new key asks again: the CLI's answer for a second claim.
        status, second, _ = await call(http, "POST", path, {"code": "new666"}, key="k2")
        expected = claim_document("new666", "app-u1", engine.claim_code("new666", "app-u1", LATER))
        assert (status, second) == (409, expected) and second["status"] == "already_claimed"
        status, unknown, _ = await call(http, "POST", path, {"code": "NOPE"}, key="k3")
        assert (status, unknown["status"]) == (404, "unknown_code")
        assert (await call(http, "POST", path, {"code": ""}, key="k4"))[0] == 422
        assert (await call(http, "POST", path, {"code": "x", "extra": 1}, key="k5"))[0] == 422
        grants = [r for r in engine.outbox(1000).records if r.kind == "grant"]
        assert [g.trigger for g in grants] == ["code:NEW666"]

    serve(redis_url, scenario)


def test_points_are_redeemed_once_per_key_and_refused_like_the_engine(redis_url: str) -> None:
    path = "/api/v1/customers/p1/points/redeem"

    async def scenario(http: TestClient, engine: RewardEngine) -> None:
        engine.adjust_points("p1", 1000, "seed", NOW, "test")
        status, spent, _ = await call(http, "POST", path, {"points": 300}, key="r1")
        assert status == 200 and spent["status"] == "redeemed" and spent["record"]["points_delta"] == -300
        assert (await call(http, "POST", path, {"points": 300}, key="r1"))[1] == spent
        assert engine.wallet("p1", LATER)["points"]["balance"] == 700  # type: ignore[index]
        status, refused, _ = await call(http, "POST", path, {"points": 5000}, key="r2")
        assert status == 409 and refused["status"] == "refused"
        # An order paid with points twice under two keys: once per reference.
        assert (await call(http, "POST", path, {"points": 100, "reference": "o-9"}, key="r3"))[0] == 200
        status, dup, _ = await call(http, "POST", path, {"points": 100, "reference": "o-9"}, key="r4")
        assert (status, dup["status"]) == (409, "duplicate_reference")
        assert engine.wallet("p1", LATER)["points"]["balance"] == 600  # type: ignore[index]

    serve(redis_url, scenario)


def test_available_envelope_money_is_withdrawn_once(redis_url: str) -> None:
    path = "/api/v1/customers/w1/withdrawals"

    async def scenario(http: TestClient, engine: RewardEngine) -> None:
        engine.on_events([(accept("w1", n), NOW) for n in range(3)], NOW)  # 3 x 5.00, pending 8 days
        status, done, _ = await call(http, "POST", path, {"amount_cents": 1000}, key="w-1")
        assert status == 200 and done["record"]["amount_cents"] == 1000
        assert (await call(http, "POST", path, {"amount_cents": 1000}, key="w-1"))[1] == done
        status, refused, _ = await call(http, "POST", path, {"amount_cents": 1000}, key="w-2")
        assert status == 409 and "only 5.00 is available" in refused["error"]
        status, small, _ = await call(http, "POST", path, {"amount_cents": 500}, key="w-3")
        assert status == 409 and "smallest withdrawal is 10.00" in small["error"]
        withdrawals = [r for r in engine.outbox(1000).records if r.kind == "withdrawal"]
        assert [r.amount_cents for r in withdrawals] == [1000]
        wallet = (await call(http, "GET", "/api/v1/customers/w1/wallet"))[1]
        assert wallet == engine.wallet("w1", LATER) and wallet["envelopes"]["withdrawn_cents"] == 1000

    serve(redis_url, scenario)


def test_a_delivery_address_readies_the_waiting_prize(redis_url: str) -> None:
    path = "/api/v1/customers/g1/address"

    async def scenario(http: TestClient, engine: RewardEngine) -> None:
        join = Interaction(event_id="j1", user_id="g1", ts=NOW, channel="app", kind="campaign_join", target="x")
        engine.on_event(join, NOW, NOW)
        status, saved, _ = await call(http, "PUT", path, {"address": "1 Harbour Rd"}, key="a1")
        assert status == 200 and [r["kind"] for r in saved["ready"]] == ["fulfilment"]
        assert (await call(http, "PUT", path, {"address": "1 Harbour Rd"}, key="a1"))[1] == saved
        assert engine.wallet("g1", LATER)["goods"][0]["status"] == "ready"  # type: ignore[index]
        status, refused, _ = await call(http, "PUT", path, {"address": "   "}, key="a2")
        assert (status, refused["error"]) == (422, "the address is empty")

    serve(redis_url, scenario)


def test_tiers_are_the_user_commands_document(redis_url: str) -> None:
    async def scenario(http: TestClient, _engine: RewardEngine) -> None:
        status, missing, _ = await call(http, "GET", "/api/v1/customers/nobody/tiers")
        assert status == 404 and "unknown user 'nobody'" in missing["error"]
        config = load_config()
        store = StateStore(connect(redis_url), config.state.retention_days)
        event = buy("t1", 1, ts=NOW)
        store.apply({("t1", "touch.purchase:0"): [encode_event(event, NOW, 0)]})
        status, doc, _ = await call(http, "GET", "/api/v1/customers/t1/tiers")
        assert status == 200 and doc["user_id"] == "t1" and doc["frequency"]

    serve(redis_url, scenario)


def test_concurrent_retries_of_one_write_take_effect_once(redis_url: str) -> None:
    path = "/api/v1/customers/c1/withdrawals"

    async def scenario(http: TestClient, engine: RewardEngine) -> None:
        engine.on_events([(accept("c1", n), NOW) for n in range(4)], NOW)  # 20.00 available later
        answers = await asyncio.gather(*(call(http, "POST", path, {"amount_cents": 1000}, key="same")
                                         for _ in range(8)))
        done = [doc for status, doc, _ in answers if status == 200]
        assert done and all(doc == done[0] for doc in done)
        assert all(status == 409 and "still running" in doc["error"] for status, doc, _ in answers if status != 200)
        assert [r.amount_cents for r in engine.outbox(1000).records if r.kind == "withdrawal"] == [1000]

    serve(redis_url, scenario)


@pytest.mark.service
def test_a_claim_through_the_api_is_published_once_by_the_worker(settings: Settings, tmp_path: Path) -> None:
    path = "/api/v1/customers/k1/codes/claim"

    async def scenario(http: TestClient, _engine: RewardEngine) -> None:
        for _ in range(3):  # an app retrying: one effect
            status, doc, _ = await call(http, "POST", path, {"code": "NEW666"}, key="once")
            assert status == 200
        published = read_all(settings, settings.topics.reward_grants, expected=1)
        assert [(r["kind"], r["user_id"], r["trigger"]) for r in published] == [("grant", "k1", "code:NEW666")]
        assert published[0]["record_id"] == doc["record_id"]

    with running_worker(settings, tmp_path):
        serve(settings.redis_url, scenario)
