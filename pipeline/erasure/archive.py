"""A customer's rows deleted from the archive: every table of the archive database with a
`user_id` column (the raw touch events, tier changes and reward grants, and the per-user
aggregates the materialized views keep). Views hold no rows of their own. Found by
column, so a table a later migration adds is covered too."""

from __future__ import annotations

from tierflow.pipeline.archive.backend import Backend

_TABLES = """
SELECT c.table
FROM system.columns AS c
INNER JOIN system.tables AS t ON t.database = c.database AND t.name = c.table
WHERE c.database = currentDatabase() AND c.name = 'user_id' AND t.engine LIKE '%MergeTree'
ORDER BY c.table
"""


def user_tables(backend: Backend) -> list[str]:
    """Tables (not views) with a user_id column."""
    return [row[0] for row in backend.query(_TABLES)]


def rows_of(backend: Backend, user_id: str) -> dict[str, int]:
    """The customer's rows per table (before merges: an aggregate's parts count apart)."""
    return {table: int(backend.query("SELECT count() FROM {table:Identifier} WHERE user_id = {user:String}",
                                     {"table": table, "user": user_id})[0][0])
            for table in user_tables(backend)}


def delete_user(backend: Backend, user_id: str) -> dict[str, int]:
    """Delete the customer's rows from every such table; returns the rows deleted per table.
    Each delete waits until it is done (mutations_sync), so a query right after sees none."""
    found = rows_of(backend, user_id)
    for table, count in found.items():
        if count:
            backend.execute("ALTER TABLE {table:Identifier} DELETE WHERE user_id = {user:String}"
                            " SETTINGS mutations_sync = 2", {"table": table, "user": user_id})
    return found
