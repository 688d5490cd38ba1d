"""/healthz's rounds of checks without a worker: every check's answer, a hung one
bounded by the timeout, concurrent requests sharing a round, and the service probes
against ports where nothing listens."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

from tests.fixtures.worker import free_port
from tierflow.agents.health import Consuming, Health, Verdict, service_check
from tierflow.infra import kafka, redis
from tierflow.pipeline.config.settings import KafkaSettings, Settings

TIMEOUT_S = 0.3


def test_a_round_reports_every_check_and_bounds_a_hung_one() -> None:
    release = threading.Event()

    def bug() -> str | None:
        raise RuntimeError("boom")

    def hangs() -> str | None:
        release.wait(10)
        return None

    health = Health({"fine": lambda: None, "down": lambda: "unreachable", "hangs": hangs, "bug": bug}, TIMEOUT_S)

    async def probe() -> Verdict:
        try:
            return await health.verdict()
        finally:
            release.set()

    verdict = asyncio.run(probe())
    assert verdict.checks == {"fine": "ok", "down": "unreachable", "hangs": f"no answer within {TIMEOUT_S:g}s",
                              "bug": "failing (RuntimeError)"}
    assert not verdict.healthy


def test_requests_that_arrive_together_share_one_round() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def counted() -> str | None:
        calls.append(1)
        gate.wait(5)
        return None

    health = Health({"counted": counted}, timeout_s=5)

    async def three_requests() -> list[Verdict]:
        asyncio.get_running_loop().call_later(0.2, gate.set)
        return await asyncio.gather(health.verdict(), health.verdict(), health.verdict())

    verdicts = asyncio.run(three_requests())
    assert len(calls) == 1 and all(v.healthy for v in verdicts)
    asyncio.run(health.verdict())  # a later request asks again
    assert len(calls) == 2


def test_consuming_only_while_the_loop_runs() -> None:
    consuming = Consuming()
    assert consuming.check() is not None
    with consuming.running():
        assert consuming.check() is None
    assert consuming.check() is not None


def test_probes_of_services_that_do_not_listen_say_unreachable() -> None:
    nowhere = Settings(kafka=KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}"))
    nowhere = replace(nowhere, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert service_check(kafka.is_up, nowhere, TIMEOUT_S)() == "unreachable"
    assert service_check(redis.is_up, nowhere, TIMEOUT_S)() == "unreachable"
