"""Read-only SQL on the archive: which statements `tierflow sql` and the owner's SQL
endpoint accept (pure), and how query parameters and results travel as JSON.

The check is the first line of defence, not the only one: every accepted
statement also runs with ClickHouse's ``readonly=1``. It admits one statement
that starts with SELECT, WITH, SHOW, DESCRIBE (DESC) or EXPLAIN, with no second
statement after a ';' and no ``INTO OUTFILE`` (which writes a file on the
machine that runs the engine, readonly or not).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from itertools import pairwise
from typing import Any

from tierflow.pipeline.errors import TierflowError

READ_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN"})
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUOTES = {"'": "'", '"': '"', "`": "`"}


class SqlRefused(TierflowError, ValueError):
    """Not a single read-only statement."""


def _code(sql: str) -> Iterator[tuple[int, str]]:
    """(position, character) of the SQL outside string literals, quoted identifiers
    and comments; each literal, identifier or comment yields one space."""
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in _QUOTES:
            end = i + 1
            while end < n and sql[end] != _QUOTES[ch]:
                end += 2 if sql[end] == "\\" else 1
            if end >= n:
                raise SqlRefused("unterminated quote")
            yield i, " "
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            yield i, " "
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise SqlRefused("unterminated comment")
            yield i, " "
            i = end + 2
        else:
            yield i, ch
            i += 1


def read_only_statement(sql: str) -> str:
    """The statement to run (a trailing ';' removed), or SqlRefused saying why not."""
    code = "".join(ch for _, ch in _code(sql))
    body, _, rest = code.partition(";")
    if rest.strip(" \t\r\n;"):
        raise SqlRefused("one statement at a time")
    words = [w.upper() for w in _WORD.findall(body)]
    if not words:
        raise SqlRefused("no statement")
    match = _WORD.match(body.lstrip(" \t\r\n("))
    keyword = match[0].upper() if match else ""
    if keyword not in READ_KEYWORDS:
        allowed = ", ".join(sorted(READ_KEYWORDS - {"DESC"}))
        raise SqlRefused(f"only read-only queries are allowed ({allowed}), not {keyword or body.strip()[:20]!r}")
    if any(a == "INTO" and b == "OUTFILE" for a, b in pairwise(words)):
        raise SqlRefused("INTO OUTFILE is not allowed")
    cut = next((pos for pos, ch in _code(sql) if ch == ";"), len(sql))
    return sql[:cut].strip()


# --- JSON transport between a reader and the owner ------------------------------------------

_TEMPORAL = {"date": date.fromisoformat, "datetime": datetime.fromisoformat}


def encode_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Dates and times tagged, so the owner binds what the caller bound."""
    out: dict[str, Any] = {}
    for name, value in (params or {}).items():
        if isinstance(value, datetime):
            out[name] = {"datetime": value.isoformat()}
        elif isinstance(value, date):
            out[name] = {"date": value.isoformat()}
        else:
            out[name] = value
    return out


def decode_params(doc: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in doc.items():
        if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _TEMPORAL:
            tag, text = next(iter(value.items()))
            out[name] = _TEMPORAL[tag](text)
        else:
            out[name] = value
    return out


def _unwrap(type_name: str) -> str:
    for wrapper in ("Nullable(", "LowCardinality("):
        while type_name.startswith(wrapper):
            type_name = type_name[len(wrapper):-1]
    return type_name


def from_json(value: Any, type_name: str) -> Any:
    """A JSON value back to what the engine returned for a column of this type (dates,
    times, and arrays of them; other values are JSON's own)."""
    if value is None:
        return None
    kind = _unwrap(type_name)
    if kind.startswith("Array("):
        return [from_json(v, kind[len("Array("):-1]) for v in value]
    if kind in ("Date", "Date32"):
        return date.fromisoformat(value)
    if kind.startswith("DateTime"):
        return datetime.fromisoformat(value)
    return value


def json_default(value: object) -> object:
    """Values orjson does not know (Decimal, IP addresses, ...) as their text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)
