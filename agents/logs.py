"""The worker's log format. "text" is Faust's own (for people at a terminal);
"json" writes one object per line for a log shipper:

    {"ts": "2026-12-03T06:30:01.123Z", "level": "warning", "logger": "tierflow.archive",
     "message": "archive: cannot write ...", "exc": "Traceback ..." (only with one), ...}

Fields passed with `extra={...}` follow as they are (their text masked like the
message), so they can be searched without parsing the message.

In both formats a line that repeats, numbers aside, is shown once per `[worker]
log_repeats_s`: while a service is down its clients retry many times a second,
and one line says it as well as six hundred.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import faust
import orjson

# What every LogRecord carries; anything else on a record came from `extra`.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _plain(value: object, scrub: Callable[[str], str]) -> object:
    """JSON's own scalars as they are; any other value as its (masked) text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub(value if isinstance(value, str) else str(value))


class JsonFormatter(logging.Formatter):
    def __init__(self, scrub: Callable[[str], str] = str) -> None:
        super().__init__()
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.scrub(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry.setdefault(key, _plain(value, self.scrub))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = self.scrub(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.scrub(record.stack_info)
        return orjson.dumps(entry).decode()


_NUMBERS = re.compile(r"\d+")


class Repeats(logging.Filter):
    """Lets a line through once per `window_s` per logger, level and message with
    its numbers blanked (ports, ids, delays, offsets); the next one through says how
    many were held back meanwhile."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self._open: dict[tuple[str, int, str], tuple[float, int]] = {}  # key -> (window end, held back)
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.window_s <= 0:
            return True
        key = (record.name, record.levelno, _NUMBERS.sub("#", record.getMessage()))
        now = self.clock()
        with self._lock:
            ends, held = self._open.get(key, (now, 0))
            if now < ends:
                self._open[key] = (ends, held + 1)
                return False
            self._open = {k: v for k, v in self._open.items() if v[0] > now}  # forget closed windows
            self._open[key] = (now + self.window_s, 0)
        if held:
            # Appended to the rendered text: the message may be a %-template. Empty args, not
            # None: mode's formatter wraps None into (None,) and formats the text with it.
            record.msg, record.args = f"{record.getMessage()} ({held} more like it held back)", ()
        return True


class Worker(faust.Worker):
    """Faust's worker, with every log handler it sets up holding back repeated lines."""

    def __init__(self, *args: Any, repeats: Repeats, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.repeats = repeats

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        for handler in logger.handlers:
            handler.addFilter(self.repeats)


def logging_config(log_format: str, level: str, scrub: Callable[[str], str]) -> dict[str, Any] | None:
    """A `logging.config.dictConfig` for the format, or None to keep Faust's own."""
    if log_format != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "scrub": scrub}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json",
                                 "stream": "ext://sys.stdout"}},
        "root": {"level": level.upper(), "handlers": ["default"]},
    }
