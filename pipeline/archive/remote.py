"""Reading the embedded archive through the process that owns it.

The owner (a worker, or `tierflow dashboard`) answers ``POST /api/archive/sql`` on
its web port: one read-only statement (sql.py) with its parameters, run with
readonly=1, answered with column names, ClickHouse types and rows. It answers
loopback clients that present the token it wrote in the owner file (owner.py),
plus the dashboard token when one is configured (the web server's own guard).

`RemoteBackend` is the client side: a read-only `Backend` whose queries the owner
runs, so every report (AIPL, tiers, rewards) and `tierflow sql` read the same
way whether this process holds the archive or not.
"""

from __future__ import annotations

import asyncio
import ipaddress
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from tierflow.pipeline.archive.backend import (
    ArchiveQueryError,
    ArchiveUnavailable,
    Params,
    Table,
)
from tierflow.pipeline.archive.owner import Endpoint
from tierflow.pipeline.archive.sql import (
    SqlRefused,
    decode_params,
    encode_params,
    from_json,
    json_default,
    read_only_statement,
)

if TYPE_CHECKING:
    from tierflow.pipeline.archive.handle import Archive

SQL_PATH = "/api/archive/sql"
TOKEN_HEADER = "X-Tierflow-Archive-Token"


class ArchiveReadOnly(ArchiveUnavailable):
    """A write asked of a reader that reads through another process."""


class RemoteBackend:
    """The archive of another process, read-only, over its SQL endpoint."""

    kind = "remote"

    def __init__(self, endpoint: Endpoint, pid: int, timeout_s: float, dashboard_token: str | None) -> None:
        self.endpoint = endpoint
        self.display = f"the archive owner (pid {pid}) at {endpoint.url}"
        self.timeout_s = timeout_s
        self.dashboard_token = dashboard_token

    def select(self, sql: str, params: Params = None) -> Table:
        body = orjson.dumps({"sql": sql, "params": encode_params(params)})
        request = urllib.request.Request(
            self.endpoint.url + SQL_PATH, data=body, method="POST",
            headers={"Content-Type": "application/json", TOKEN_HEADER: self.endpoint.token},
        )
        if self.dashboard_token:
            request.add_header("Authorization", f"Bearer {self.dashboard_token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                doc = orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            error = _error_of(exc)
            if exc.code == 400:
                raise ArchiveQueryError(error) from exc
            raise ArchiveUnavailable(f"{self.display} answered {exc.code}: {error}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ArchiveUnavailable(f"{self.display} does not answer ({exc})") from exc
        types = doc["types"]
        rows = [tuple(from_json(v, t) for v, t in zip(row, types, strict=True)) for row in doc["rows"]]
        return Table(doc["columns"], types, rows)

    def query(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]:
        return self.select(sql, params).rows

    def execute(self, sql: str, params: Params = None) -> None:
        raise ArchiveReadOnly(f"{self.display} holds the archive; this process only reads it")

    def insert(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str], token: str | None = None
    ) -> None:
        raise ArchiveReadOnly(f"{self.display} holds the archive; this process only reads it")

    def session(self) -> int:
        return 0

    def close(self) -> None:
        return None


def _error_of(exc: urllib.error.HTTPError) -> str:
    raw = exc.read()
    try:
        return str(orjson.loads(raw)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return raw.decode(errors="replace")[:300]


# --- the owner's side ---------------------------------------------------------------------


def _loopback(peer: str | None) -> bool:
    try:
        return peer is not None and ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return False


def sql_handler(archive: Archive) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The endpoint's aiohttp handler, for the process that holds `archive`."""

    def answer(doc: object, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(doc, default=json_default), status=status,
                            content_type="application/json", headers={"Cache-Control": "no-store"})

    async def handle(request: web.Request) -> web.StreamResponse:
        if not _loopback(request.remote):
            return answer({"error": "the archive's SQL endpoint answers loopback clients only"}, 403)
        if request.headers.get(TOKEN_HEADER) != archive.read_token:
            return answer({"error": f"a valid {TOKEN_HEADER} is required (see the owner file)"}, 401)
        try:
            doc = orjson.loads(await request.read())
            statement = read_only_statement(str(doc["sql"]))
            params = decode_params(doc.get("params") or {})
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, SqlRefused) else f"bad request: {exc}"
            return answer({"error": reason}, 400)
        try:
            # Local only: a reader never forwards, so two processes cannot bounce a query.
            table = await asyncio.to_thread(lambda: archive.backend().select(statement, params))
        except ArchiveQueryError as exc:
            return answer({"error": str(exc)}, 400)
        except ArchiveUnavailable as exc:
            return answer({"error": str(exc)}, 503)
        return answer({"columns": table.columns, "types": table.types, "rows": table.rows})

    return handle


def add_sql_route(router: web.UrlDispatcher, archive: Archive) -> None:
    router.add_post(SQL_PATH, sql_handler(archive))
