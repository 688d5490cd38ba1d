"""`tierflow sql QUERY [--json] [--param NAME=VALUE ...]`: read-only SQL on the archive.

On a ClickHouse server, or on embedded chDB that no other process holds, the
query runs here; while a worker (or `tierflow dashboard`) owns the embedded
archive, it runs there, through its SQL endpoint. Either way only one
SELECT / WITH / SHOW / DESCRIBE / EXPLAIN statement is accepted, and it runs
with readonly=1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

import orjson

from tierflow.pipeline.archive.backend import ArchiveQueryError, ArchiveUnavailable, Table
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.archive.migrate import MigrationError
from tierflow.pipeline.archive.sql import SqlRefused, json_default, read_only_statement
from tierflow.pipeline.cli.commands.archive import unavailable
from tierflow.pipeline.cli.errors import CliError
from tierflow.pipeline.config.context import from_args

EXIT_REFUSED = 2


def _param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def as_objects(table: Table) -> list[dict[str, Any]]:
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return orjson.dumps(value, default=json_default).decode()
    if hasattr(value, "isoformat"):
        return value.isoformat()  # type: ignore[no-any-return]
    return str(value)


def as_lines(table: Table) -> Iterable[str]:
    """Tab-separated, with a header line (clickhouse-client's TSVWithNames, NULL spelt out)."""
    yield "\t".join(table.columns)
    for row in table.rows:
        yield "\t".join(_cell(v) for v in row)


def _sql(args: argparse.Namespace) -> int:
    try:
        statement = read_only_statement(args.query)
    except SqlRefused as exc:
        raise CliError(f"refused: {exc}", EXIT_REFUSED) from exc
    ctx = from_args(args)
    archive = Archive(ctx.settings, ctx.config.archive, read_only=True)
    try:
        table = archive.reader().select(statement, dict(args.param or []))
    except ArchiveQueryError as exc:
        raise CliError(f"SQL error: {exc}", 1) from exc
    except (ArchiveUnavailable, MigrationError) as exc:
        raise unavailable(exc) from exc
    finally:
        archive.close()
    if args.json:
        sys.stdout.write(orjson.dumps(as_objects(table), default=json_default).decode() + "\n")
    else:
        for line in as_lines(table):
            print(line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "sql", help="run a read-only SQL query on the archive",
        description="One SELECT, WITH, SHOW, DESCRIBE or EXPLAIN statement on the ClickHouse"
                    " archive, run with readonly=1; while a worker owns the embedded archive, it"
                    " runs there. Tables and example queries: docs/bi.md. Exit 0 with the rows,"
                    " 1 when ClickHouse refuses the query or cannot be reached, 2 when the"
                    " statement is not read-only.",
    )
    parser.add_argument("query", metavar="QUERY", help="the SQL statement")
    parser.add_argument("--json", action="store_true", help="a JSON array of row objects")
    parser.add_argument("--param", action="append", type=_param, metavar="NAME=VALUE",
                        help="a value for a {NAME:Type} placeholder (repeatable)")
    parser.set_defaults(func=_sql)
