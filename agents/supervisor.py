"""The one supervisor: a piece of work in a daemon thread, run again after it fails.

The ingest loop and the archive writer run this way. A failure (Redis or Kafka
down, an unexpected error) ends the work; whatever it had not committed is
replayed by the next run, which starts after a growing delay.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable, Sequence

import faust
from mode import Service

from tierflow.agents.ingest import is_outage

log = logging.getLogger("tierflow.supervisor")

Work = Callable[[threading.Event], None]


class Supervisor:
    def __init__(self, name: str, work: Work, backoff_s: Sequence[float]) -> None:
        """`work(stop)` runs until `stop` is set; `backoff_s` are the delays after
        consecutive failures (the last one repeats)."""
        self.name = name
        self.work = work
        self.backoff_s = list(backoff_s)
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.failures = 0

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.work(self.stop_event)
                self.failures = 0
            except Exception as exc:
                self._failed(exc)
            except:  # noqa: E722
                # confluent-kafka's close() can re-raise what a rebalance callback left as a
                # bare KafkaError object, which no `except Exception` matches; ending the
                # thread would leave a worker that looks alive but consumes nothing.
                self._failed(sys.exc_info()[1])

    def _failed(self, exc: object) -> None:
        delay = self.backoff_s[min(self.failures, len(self.backoff_s) - 1)]
        self.failures += 1
        if isinstance(exc, Exception) and not is_outage(exc):
            log.exception("%s failed; restarting in %ss", self.name, delay)
        else:  # expected while a service is down: one line, no traceback
            log.warning("%s failed; restarting in %ss: a service is unavailable (%s: %s)",
                        self.name, delay, type(exc).__name__, exc)
        self.stop_event.wait(delay)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"tierflow-{self.name}", daemon=True)
        self.thread.start()

    def stop(self, timeout_s: float) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout_s)


def hosted(app: faust.App, supervisor: Supervisor | None, stop_timeout_s: float,
           on_stopped: Callable[[], None]) -> type[Service]:
    """A service for the Faust app: the supervised work starts and stops with the
    worker, then `on_stopped` releases what the work shared (a producer, the archive).

    The app stops its services one after the other, and one may take seconds (the
    archive finishing an insert). So every supervised work is told to stop as soon as
    the app starts stopping, not when its own turn comes: the ingest loop ends its
    batch then, instead of taking more batches while the services before it stop."""
    if supervisor is not None:
        app.on_before_shutdown.connect(lambda _app, **_: supervisor.stop_event.set())

    class Hosted(Service):
        async def on_start(self) -> None:
            if supervisor is not None:
                supervisor.start()

        async def on_stop(self) -> None:
            if supervisor is not None:
                await asyncio.to_thread(supervisor.stop, stop_timeout_s)
            on_stopped()

    return Hosted
