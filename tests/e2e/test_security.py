"""Security on real services: Kafka over SASL/PLAIN and Redis with an ACL user,
both started by `tierflow up`'s code; wrong credentials as one line naming the
service; the web server behind the token; no secret in any log or output."""

from __future__ import annotations

import http.cookiejar
import re
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import orjson
import pytest

from tests.fixtures.secured import secret
from tests.fixtures.worker import WorkerProcess, cli, free_port
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.kafka.topics import ensure_topics

pytestmark = pytest.mark.service

FAUST_ROUTES = ("/", "/router/", "/table/", "/stats/", "/graph/")
DASHBOARD_ROUTES = ("/dashboard/", "/api/aipl", "/api/tiers", "/api/archive/status")


def one_line(result: subprocess.CompletedProcess) -> str:
    """The error of a failed command: one line on stderr, no traceback."""
    error = result.stderr.decode().strip()
    assert result.returncode != 0, result.stdout.decode()
    assert len(error.splitlines()) == 1, error
    return error


def redis_password(settings: Settings) -> str:
    return urlsplit(settings.redis_url).password or ""


def test_wrong_credentials_are_one_line_naming_the_service(secured: Settings) -> None:
    wrong_redis = replace(secured, redis_url=secured.redis_url.replace(redis_password(secured), "wrong"))
    for command in (("user", "c1"), ("segments",), ("up",), ("worker",)):
        error = one_line(cli(wrong_redis, *command))
        assert re.fullmatch(r"tierflow: Redis at redis://127\.0\.0\.1:\d+/0 refused the credentials"
                            r" in REDIS_URL \(invalid username-password pair.*\)", error), command
    wrong_kafka = replace(secured, kafka=replace(secured.kafka, sasl_password="wrong"))
    for command in (("up",), ("worker",)):
        error = one_line(cli(wrong_kafka, *command))
        assert re.fullmatch(r"tierflow: Kafka at 127\.0\.0\.1:\d+ refused the credentials in"
                            r" KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD \(Authentication failed.*\)", error)
    for wrong, row in ((wrong_redis, 1), (wrong_kafka, 0)):
        status = cli(wrong, "status")
        assert status.returncode == 1
        assert status.stdout.decode().splitlines()[row].endswith("credentials refused")


def test_a_public_web_server_needs_a_token(tmp_path: Path) -> None:
    # Refused before anything starts: no services needed.
    public = replace(Settings.from_env(), web_host="0.0.0.0", home=tmp_path)
    for command in (("worker",), ("dashboard", "--host", "0.0.0.0")):
        error = one_line(cli(public, *command))
        assert error.startswith("tierflow: configuration error: refusing to serve the dashboard on"
                                " 0.0.0.0 without TIERFLOW_DASHBOARD_TOKEN"), command


class Web:
    """HTTP against the worker's web server, keeping every body for the secrets check."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.bodies: list[str] = []
        self.cookies = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def get(self, path: str, token: str | None = None, session: bool = False) -> int:
        request = urllib.request.Request(self.base + path, headers={"Accept": "application/json"})
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        return self._open(request, session)

    def login(self, token: str) -> int:
        body = urlencode({"token": token}).encode()
        return self._open(urllib.request.Request(self.base + "/dashboard/login", data=body), True)

    def _open(self, request: urllib.request.Request, session: bool) -> int:
        opener = self.cookies if session else urllib.request.build_opener()
        try:
            with opener.open(request, timeout=30) as response:
                self.bodies.append(response.read().decode(errors="replace"))
                return response.status
        except urllib.error.HTTPError as exc:
            self.bodies.append(exc.read().decode(errors="replace"))
            return exc.code


def wait_for_web(web: Web, worker: WorkerProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert worker.alive, worker.log_tail()
        try:
            web.get("/dashboard/static/dashboard.js")
            return
        except OSError:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.5)


def test_the_worker_answers_only_with_the_token_and_no_secret_reaches_a_log(
    secured: Settings, tmp_path: Path,
) -> None:
    token = secret("token")
    clickhouse_password = secret("clickhouse")
    # A ClickHouse server that is not there: the archive writer logs its errors all along.
    settings = replace(
        secured, web_host="0.0.0.0", dashboard_token=token,
        clickhouse_url=f"http://default:{clickhouse_password}@127.0.0.1:{free_port()}/tierflow",
    )
    hidden = [token, clickhouse_password, secured.kafka.sasl_password or "", redis_password(secured)]
    outputs: list[bytes] = []

    def run(*command: str, input: bytes | None = None) -> subprocess.CompletedProcess:
        result = cli(settings, *command, input=input)
        outputs.extend((result.stdout, result.stderr))
        return result

    ensure_topics(settings)
    # Debug logging: the level where a client library would print what it sends.
    worker = WorkerProcess(settings, tmp_path / "worker.log", loglevel="debug")
    worker.start()
    try:
        events = [{"event_id": f"e{i}", "type": "purchase", "user_id": f"c{i % 3}",
                   "ts": int(time.time() * 1000) - i * 60_000, "channel": "app", "order_id": f"o{i}",
                   "amount": 12.5, "currency": "CNY",
                   "items": [{"sku": "SN001", "category": "snacks", "qty": 1, "price": 12.5}]}
                  for i in range(30)]
        sent = run("produce", "-", input=b"\n".join(orjson.dumps(e) for e in events))
        assert sent.returncode == 0, sent.stderr.decode()
        done = run("lag", "--wait", "--timeout", "120")
        assert done.returncode == 0, done.stderr.decode() + worker.log_tail()
        shown = run("user", "c1", "--json")
        assert orjson.loads(shown.stdout)["frequency"]["lifetime"] == 10
        for command in (("segments",), ("status",), ("up",), ("rewards",), ("wallet", "c1")):
            run(*command)
        assert "ClickHouse at" in run("aipl").stderr.decode()  # it is not there

        web = Web(worker.web_port)
        wait_for_web(web, worker)
        for path in FAUST_ROUTES + DASHBOARD_ROUTES:
            assert web.get(path) == 401, path
            assert web.get(f"{path}?{urlencode({'token': token})}") == 401, path  # never in a URL
        assert web.get("/", token=token) == 200  # Faust's index, behind the token
        assert web.get("/router/", token=token) == 404  # Faust's debug pages: off
        # Past the token, the API answers that the archive (ClickHouse) is not there.
        assert web.get("/api/archive/status", token=token) == 503
        assert web.login("not-the-token") == 401
        assert web.login(token) == 200  # redirected to the page, with the session cookie
        assert web.get("/api/tiers", session=True) == 503
    finally:
        worker.stop()

    logs = [worker.log_path, secured.home / "kafka" / "kafka.log", secured.home / "redis" / "redis.log"]
    texts = [path.read_text(errors="replace") for path in logs]
    texts += [out.decode(errors="replace") for out in outputs] + web.bodies
    assert "DEBUG" in texts[0] and "Logging error" not in texts[0]  # masking broke no record
    for value in hidden:
        assert len(value) > 8
        leaks = [i for i, text in enumerate(texts) if value in text]
        assert leaks == [], f"a secret leaked into {leaks}"
