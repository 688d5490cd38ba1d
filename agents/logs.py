"""The worker's log format. "text" is Faust's own (for people at a terminal);
"json" writes one object per line for a log shipper:

    {"ts": "2026-12-03T06:30:01.123Z", "level": "warning", "logger": "tierflow.archive",
     "message": "archive: cannot write ...", "exc": "Traceback ..." (only with one), ...}

Fields passed with `extra={...}` follow as they are (their text masked like the
message), so they can be searched without parsing the message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

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
