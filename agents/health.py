"""GET /healthz: whether this worker is doing its job, for a load balancer or an
orchestrator's probe.

200 `{"status": "ok", "checks": {...}}` while the ingest loop is consuming and
Kafka, Redis and the archive (when enabled) answer within `[worker]
health_timeout_s`; 503 `{"status": "unavailable", "reason": "redis: ...",
"checks": {...}}` otherwise, and 200 again once they are back. Every request
asks the services afresh; requests that arrive while a round is under way share it.

It answers without the dashboard token (probes rarely send headers), so it tells
nothing beyond what is up: no addresses, no error text (those go to the log,
one line when the verdict changes).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import orjson
from aiohttp import web

from tierflow.infra import kafka, redis
from tierflow.infra.errors import CredentialsRefused
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.config.settings import Settings

log = logging.getLogger("tierflow.health")

OK = "ok"
HTTP_OK = 200
HTTP_UNAVAILABLE = 503

# A check answers None when all is well, else a short reason without addresses or secrets.
Check = Callable[[], str | None]


class Consuming:
    """Set while the ingest loop runs: between its start and its end or failure (the
    supervisor then waits before the next run)."""

    def __init__(self) -> None:
        self._running = threading.Event()

    @contextmanager
    def running(self) -> Iterator[None]:
        self._running.set()
        try:
            yield
        finally:
            self._running.clear()

    def check(self) -> str | None:
        return None if self._running.is_set() else "not consuming (starting, or restarting after a failure)"


def service_check(is_up: Callable[[Settings, float], bool], settings: Settings, timeout_s: float) -> Check:
    """A check of an `infra` probe (`kafka.is_up`, `redis.is_up`)."""

    def check() -> str | None:
        try:
            return None if is_up(settings, timeout_s) else "unreachable"
        except CredentialsRefused:
            return "credentials refused"

    return check


def archive_check(archive: Archive) -> Check:
    """The archive answers a query: this process's, or the process's that owns the
    embedded archive while this one stands by."""

    def check() -> str | None:
        archive.reader().query("SELECT 1")
        return None

    return check


def worker_checks(
    settings: Settings, timeout_s: float, consuming: Consuming, archive: Archive | None
) -> dict[str, Check]:
    checks = {
        "ingest": consuming.check,
        "kafka": service_check(kafka.is_up, settings, timeout_s),
        "redis": service_check(redis.is_up, settings, timeout_s),
    }
    if archive is not None:
        checks["archive"] = archive_check(archive)
    return checks


@dataclass(frozen=True)
class Verdict:
    checks: dict[str, str]

    @property
    def healthy(self) -> bool:
        return all(result == OK for result in self.checks.values())

    @property
    def reason(self) -> str | None:
        failing = [f"{name}: {result}" for name, result in self.checks.items() if result != OK]
        return "; ".join(failing) or None

    def body(self) -> dict[str, object]:
        if self.healthy:
            return {"status": OK, "checks": self.checks}
        return {"status": "unavailable", "reason": self.reason, "checks": self.checks}


class Health:
    def __init__(self, checks: Mapping[str, Check], timeout_s: float) -> None:
        self.checks = dict(checks)
        self.timeout_s = timeout_s
        self._round: asyncio.Task[Verdict] | None = None
        self._last: Verdict | None = None

    async def _run(self, name: str, check: Check) -> str:
        try:
            return await asyncio.wait_for(asyncio.to_thread(check), self.timeout_s) or OK
        except TimeoutError:
            return f"no answer within {self.timeout_s:g}s"
        except Exception as exc:  # a service failing: a reason, not a server error
            log.debug("health: %s check failed", name, exc_info=exc)
            return f"failing ({type(exc).__name__})"

    async def _round_of_checks(self) -> Verdict:
        results = await asyncio.gather(*(self._run(name, check) for name, check in self.checks.items()))
        verdict = Verdict(dict(zip(self.checks, results, strict=True)))
        self._note(verdict)
        return verdict

    def _note(self, verdict: Verdict) -> None:
        """One log line when the verdict changes."""
        last, self._last = self._last, verdict
        if verdict.healthy and last is not None and not last.healthy:
            log.info("health: ok again")
        elif not verdict.healthy and (last is None or last.reason != verdict.reason):
            log.warning("health: unavailable (%s)", verdict.reason)

    async def verdict(self) -> Verdict:
        if self._round is None or self._round.done():
            self._round = asyncio.ensure_future(self._round_of_checks())
        return await asyncio.shield(self._round)

    async def handle(self, _request: web.Request) -> web.Response:
        verdict = await self.verdict()
        return web.Response(body=orjson.dumps(verdict.body()), content_type="application/json",
                            status=HTTP_OK if verdict.healthy else HTTP_UNAVAILABLE,
                            headers={"Cache-Control": "no-store"})
