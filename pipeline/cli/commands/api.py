"""`tierflow api [--host H] [--port P]`: serve the HTTP API for apps (docs/api.md)."""

from __future__ import annotations

import argparse

from tierflow.pipeline.config.context import from_args


def _api(args: argparse.Namespace) -> int:
    from aiohttp import web

    from tierflow.pipeline.api.server import build_app
    from tierflow.pipeline.api.settings import ApiSettings
    from tierflow.pipeline.state.store import connect

    ctx = from_args(args)
    settings = ApiSettings.from_env()
    host = args.host or ctx.settings.web_host
    port = args.port or settings.port
    client = connect(ctx.settings.redis_url)
    try:
        app = build_app(ctx, client, settings, host=host)  # refuses off loopback without a token
        client.ping()  # a Redis that is down is reported now, not at the first request
        shown = f"[{host}]" if ":" in host else host
        token = ctx.settings.dashboard_token
        print(f"app API at http://{shown}:{port}/api/v1/ (OpenAPI at /api/openapi.json)"
              + (" (Authorization: Bearer $TIERFLOW_DASHBOARD_TOKEN)" if token else ""), flush=True)
        # No access log: paths carry customer ids.
        web.run_app(app, host=host, port=port, print=None, handle_signals=True, access_log=None)
    finally:
        client.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "api", help="serve the HTTP API for apps: tiers, wallet, claim a code, redeem points, withdraw, address",
        description="Bearer-token authenticated (TIERFLOW_DASHBOARD_TOKEN), rate-limited per client"
                    " (TIERFLOW_API_RATE, TIERFLOW_API_BURST), an Idempotency-Key on every write."
                    " Refuses to bind anything but loopback without a token. See docs/api.md.",
    )
    parser.add_argument("--host", help="bind address (default $TIERFLOW_WEB_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default $TIERFLOW_API_PORT, 6067)")
    parser.set_defaults(func=_api)
