"""A customer's rows taken out of the archive: every table of the archive database with a
`user_id` column. Found by column, so a table a later migration adds is covered too; views
hold no rows of their own.

Two aggregates keep the customer's counts under an anonymous id instead (ANONYMISED): the
AIPL funnel's per-day tables hold, per customer, only uniqExact states, which keep 128-bit
hashes of event and order ids and never the ids. Past funnels keep their numbers, and the
anonymous id ("erased:" and the erasure id) says nothing about who it was. Copying again
under the same id merges into the same distinct-id sets, so a repeated erasure counts once.
Every other table (raw events, tier changes, reward records, and the aggregates that keep
order ids) loses the customer's rows.
"""

from __future__ import annotations

import re

from tierflow.pipeline.archive.backend import Backend

ANONYMISED = ("aipl_user_daily", "aipl_category_daily")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_TABLES = """
SELECT c.table
FROM system.columns AS c
INNER JOIN system.tables AS t ON t.database = c.database AND t.name = c.table
WHERE c.database = currentDatabase() AND c.name = 'user_id' AND t.engine LIKE '%MergeTree'
ORDER BY c.table
"""
_COLUMNS = """
SELECT name FROM system.columns
WHERE database = currentDatabase() AND table = {table:String}
ORDER BY position
"""


def anonymous_id(erasure_id: str) -> str:
    return f"erased:{erasure_id}"


def user_tables(backend: Backend) -> list[str]:
    """Tables (not views) with a user_id column."""
    return [row[0] for row in backend.query(_TABLES)]


def rows_of(backend: Backend, user_id: str) -> dict[str, int]:
    """The customer's rows per table (before merges: an aggregate's parts count apart)."""
    return {table: int(backend.query("SELECT count() FROM {table:Identifier} WHERE user_id = {user:String}",
                                     {"table": table, "user": user_id})[0][0])
            for table in user_tables(backend)}


def _copy_anonymously(backend: Backend, table: str, user_id: str, anonymous: str) -> None:
    columns = [row[0] for row in backend.query(_COLUMNS, {"table": table})]
    if not all(_IDENTIFIER.match(name) for name in columns):  # names from the engine, checked all the same
        raise ValueError(f"unexpected column names in {table}: {columns}")
    select = ", ".join("{anonymous:String}" if name == "user_id" else name for name in columns)
    backend.execute(f"INSERT INTO {{table:Identifier}} ({', '.join(columns)}) SELECT {select}"
                    " FROM {table:Identifier} WHERE user_id = {user:String}",
                    {"table": table, "user": user_id, "anonymous": anonymous})


def erase_user(backend: Backend, user_id: str, erasure_id: str) -> dict[str, int]:
    """Take the customer out of every such table (the ANONYMISED ones keep their counts under
    `anonymous_id(erasure_id)`); returns the customer's rows per table it touched. Each
    delete waits until it is done (mutations_sync), so a query right after sees none."""
    found = {table: n for table, n in rows_of(backend, user_id).items() if n}
    for table in found:
        if table in ANONYMISED:
            _copy_anonymously(backend, table, user_id, anonymous_id(erasure_id))
        backend.execute("ALTER TABLE {table:Identifier} DELETE WHERE user_id = {user:String}"
                        " SETTINGS mutations_sync = 2", {"table": table, "user": user_id})
    return found
