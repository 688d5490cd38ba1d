"""The worker process's start and end.

Start: from the first line on, the log never shows a secret of the settings
(passwords, the dashboard token): every record has them masked, whatever
library wrote it. What no waiting can fix ends the start with one line: a web
server that would serve a non-loopback address without a token, credentials
that Kafka or Redis refuse. Faust cannot start without Kafka, so the worker
waits for it, with a line per attempt; SIGTERM or Ctrl-C end the wait. A Redis
that is merely down does not hold the start: the supervised stages retry it.

End: SIGTERM, Ctrl-C or a crash stop the Faust app, which stops the stages:
each finishes or abandons its batch, and a batch's offsets are committed only
once its effects are durable. Faust's own Kafka clients can wait minutes for a
broker that is gone, so once the app starts stopping, the process exits after
`[worker] stop_timeout_s` whatever is still waiting. That loses nothing: what
was not committed is replayed by the next start. A library call that hangs
while holding the GIL would stop that deadline's thread too, so a watchdog in C
(faulthandler) ends the process shortly after, with every thread's stack in the
log.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import faust

from tierflow.infra import kafka, redis
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.dashboard.server import check_binding

log = logging.getLogger("tierflow.worker")

# How often the shutdown watch looks whether the app has started stopping.
WATCH_EVERY_S = 0.25
# The exit status when the deadline, not the app, ended the process.
EXIT_AFTER_DEADLINE = 1
# How long after the deadline the GIL-free watchdog ends a process whose Python threads
# cannot run at all.
HARD_DEADLINE_AFTER_S = 0.5
# What a secret looks like in the log; shorter "secrets" would mask ordinary words.
MASK = "***"
MIN_SECRET_CHARS = 4


def ready_to_start(settings: Settings, backoff_s: Sequence[float]) -> bool:
    """True once Kafka answers (and Redis's credentials are not refused); False when
    a signal ended the wait. Raises `DashboardError` or `CredentialsRefused`."""
    mask_secrets(settings)
    check_binding(settings.web_host, settings.dashboard_token)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    # Faust installs its own handlers when it starts; until then these end the wait.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        attempt = 0
        while not kafka.is_up(settings):
            delay = backoff_s[min(attempt, len(backoff_s) - 1)]
            attempt += 1
            log.warning("Kafka at %s does not answer; trying again in %ss", settings.kafka.bootstrap, delay)
            if stop.wait(delay):
                return False
        if stop.is_set():
            return False
        if not redis.is_up(settings):
            log.warning("Redis at %s does not answer; the worker starts and its stages retry it",
                        settings.redis_display())
        return True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def secrets_of(settings: Settings) -> set[str]:
    """The passwords and the token in the settings, as given and as URL-decoded."""
    found = {settings.kafka.sasl_password, settings.dashboard_token}
    for url in (settings.redis_url, settings.clickhouse_url):
        password = urlsplit(url).password if url else None
        found |= {password, unquote(password)} if password else set()
    return {secret for secret in found if secret and len(secret) >= MIN_SECRET_CHARS}


def scrubber(settings: Settings) -> Callable[[str], str]:
    """A function that masks the settings' secrets in a text."""
    hidden = sorted(secrets_of(settings), key=len, reverse=True)  # longest first: no partial masks

    def scrub(text: str) -> str:
        for secret in hidden:
            text = text.replace(secret, MASK)
        return text

    return scrub


def mask_secrets(settings: Settings) -> None:
    """Mask the settings' secrets in every log record created from now on (its message,
    arguments and traceback; the JSON log format masks the extra fields too)."""
    hidden = secrets_of(settings)
    # Kafka's wire-protocol dump (DEBUG) carries the SASL handshake, perhaps escaped.
    logging.getLogger("aiokafka.conn").setLevel(logging.INFO)
    if not hidden:
        return
    scrub = scrubber(settings)

    def hide(value: object) -> object:
        """The value itself (formatters may render it their way), or its text masked
        when its text shows a secret."""
        if value is None or isinstance(value, bool | int | float):
            return value
        try:
            shown = f"{value}{value!r}"
        except Exception:  # a failing __str__ is the formatter's to report, not the caller's
            return value
        return scrub(str(value)) if any(secret in shown for secret in hidden) else value

    make = logging.getLogRecordFactory()

    def masked(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        record.msg = scrub(record.msg) if isinstance(record.msg, str) else hide(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {key: hide(value) for key, value in record.args.items()}
        elif record.args:
            record.args = tuple(hide(value) for value in record.args)
        if record.exc_info:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return record

    logging.setLogRecordFactory(masked)


def bound_shutdown(app: faust.App, stop_timeout_s: float) -> None:
    """Once `app` starts stopping, give it `stop_timeout_s`, then end the process.
    Watching from before the app starts bounds a start that never completes too."""

    def watch() -> None:
        while not app.should_stop:
            time.sleep(WATCH_EVERY_S)
        # To the process's own stderr: Faust replaces sys.stderr with a logger, which has no file.
        faulthandler.dump_traceback_later(stop_timeout_s + HARD_DEADLINE_AFTER_S, exit=True, file=sys.__stderr__)
        time.sleep(stop_timeout_s)  # a daemon thread: a process that stops in time never wakes it
        log.warning("the worker did not stop within %ss (stop_timeout_s); exiting now:"
                    " whatever was not committed is replayed on the next start", stop_timeout_s)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(EXIT_AFTER_DEADLINE)

    threading.Thread(target=watch, name="tierflow-shutdown-deadline", daemon=True).start()
