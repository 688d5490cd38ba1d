"""The worker's log masks the secrets of its settings, whoever logs them; a stopping worker
ends after its deadline, even when no Python thread can run."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from mode.utils.logging import ExtensionFormatter

from tests.fixtures.paths import ROOT
from tierflow.agents.lifecycle import MASK, mask_secrets
from tierflow.pipeline.config.settings import KafkaSettings, Settings

SETTINGS = Settings(
    kafka=KafkaSettings(sasl_username="tierflow", sasl_password="kafka-pw-1"),
    redis_url="redis://tierflow:redis%2Fpw%402@127.0.0.1:6379/0",
    clickhouse_url="http://default:ch-pw-3@127.0.0.1:8123/tierflow",
    dashboard_token="token-4-abcdef",
)
SECRETS = ("kafka-pw-1", "redis/pw@2", "redis%2Fpw%402", "ch-pw-3", "token-4-abcdef")


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[Kept]:
    factory = logging.getLogRecordFactory()
    handler = Kept()
    logger = logging.getLogger("tierflow.test.lifecycle")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logging.setLogRecordFactory(factory)


def test_every_record_has_the_secrets_masked(kept: Kept) -> None:
    mask_secrets(SETTINGS)
    log = logging.getLogger("tierflow.test.lifecycle")
    log.info("connecting with %s and %r", "kafka-pw-1", {"url": SETTINGS.redis_url})
    log.warning("token token-4-abcdef and %d%%", 5)
    try:
        raise RuntimeError(f"refused {SETTINGS.clickhouse_url} (redis/pw@2)")
    except RuntimeError:
        log.exception("failed")
    formatter = ExtensionFormatter()  # the worker's (mode's) formatter
    text = "\n".join(formatter.format(record) for record in kept.records)
    assert [r.getMessage() for r in kept.records[:2]] == [
        # A value whose text shows a secret becomes that text, masked (hence %r's quotes).
        f"connecting with {MASK} and \"{{'url': 'redis://tierflow:{MASK}@127.0.0.1:6379/0'}}\"",
        f"token {MASK} and 5%",
    ]
    assert kept.records[1].args == (5,)  # the rest stays for formatters to render
    assert "RuntimeError: refused http://default:***@127.0.0.1:8123/tierflow (***)" in text
    assert not [secret for secret in SECRETS if secret in text]


# A stopping worker whose Python threads cannot run: the main thread holds the GIL in a C
# call (a ctypes.PyDLL call never releases it), as librdkafka's close can in a rebalance.
HUNG_WHILE_STOPPING = """
import ctypes, types
from tierflow.agents.lifecycle import bound_shutdown
bound_shutdown(types.SimpleNamespace(should_stop=True), {stop_timeout_s})
import time; time.sleep(0.5)  # the deadline's thread has seen the stop
ctypes.PyDLL(None).sleep(60)
"""


def test_a_worker_that_hangs_holding_the_gil_still_ends_after_its_deadline() -> None:
    stop_timeout_s = 1.0
    started = time.monotonic()
    ended = subprocess.run([sys.executable, "-c", HUNG_WHILE_STOPPING.format(stop_timeout_s=stop_timeout_s)],
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
    took = time.monotonic() - started
    assert ended.returncode != 0
    assert took < 10, f"still running {took:.1f} s after the stop"
    assert "Timeout" in ended.stderr and "most recent call first" in ended.stderr  # every stack, for the operator
