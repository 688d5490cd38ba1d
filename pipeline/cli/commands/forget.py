"""`tierflow forget ID [--yes] [--json]`: erase a customer everywhere tierflow keeps them.

With every worker of the group stopped (else exit 3), after a confirmation:

1. records the erasure on the compacted topic `tierflow.erasures`, marked at the current
   ends of the input and output topics (pipeline/erasure/topic.py): from then on a replay,
   the archive and `tierflow rebuild` skip what the customer left on the topics, downstream
   consumers learn of it, and later events of the id start a new customer;
2. removes the customer from Redis (pipeline/erasure/store.py): their keys, and their part of
   the population counts, indexes, schedule, lanes and campaign reservations;
3. takes their rows out of every archive table with a user_id; the AIPL funnel's
   aggregates keep their counts under an anonymous id (pipeline/erasure/archive.py).

The record comes first. Should a later step fail, running the command again finishes that
erasure: with nothing of the customer left in Redis, it takes up the customer's last
erasure (same marks, same anonymous id) instead of recording a new one.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import orjson
import redis

from tierflow.pipeline.archive.backend import Backend
from tierflow.pipeline.archive.handle import Archive
from tierflow.pipeline.cli.commands.rebuild import EXIT_WORKER_RUNNING, refuse_if_running
from tierflow.pipeline.cli.confirm import confirm
from tierflow.pipeline.cli.errors import CliError
from tierflow.pipeline.config.context import Context, from_args
from tierflow.pipeline.erasure import archive as archive_rows
from tierflow.pipeline.erasure import topic
from tierflow.pipeline.erasure.store import ErasureStore
from tierflow.pipeline.lua import Redis
from tierflow.pipeline.state.store import connect


def _forget(args: argparse.Namespace) -> int:
    user_id: str = args.user_id
    ctx = from_args(args)
    longest = ctx.config.ingest.max_id_length
    if not user_id or len(user_id) > longest:
        raise CliError(f"not a user id: it has 1 to {longest} characters (ingest.max_id_length)", 2)
    client = connect(ctx.settings.redis_url)
    archive = Archive(ctx.settings, ctx.config.archive) if ctx.config.archive.enabled else None
    try:
        client.ping()  # before anything: Redis must be there to be erased from
        return forget(ctx, client, archive, user_id, assume_yes=args.yes, as_json=args.json)
    except redis.ConnectionError as exc:
        raise CliError(f"cannot reach Redis at {ctx.settings.redis_display()}: {exc}") from None
    finally:
        client.close()
        if archive is not None:
            archive.close()


def forget(ctx: Context, client: Redis, archive: Archive | None, user_id: str, *,
           assume_yes: bool, as_json: bool) -> int:
    again = f"tierflow forget {shlex.quote(user_id)}"
    refuse_if_running(ctx, again)
    store = ErasureStore(client, ctx.config, ctx.settings.partitions)
    # Opened before anything changes: an archive that cannot be reached stops the command here.
    backend: Backend | None = None if archive is None else archive.backend()
    keys = len(store.user_keys(user_id))
    rows = 0 if backend is None else sum(archive_rows.rows_of(backend, user_id).values())
    earlier = topic.load(ctx.settings).get(user_id)
    unfinished = earlier if earlier is not None and not keys else None
    what = f"finishes erasure {unfinished.erasure_id} of" if unfinished else "erases"
    print(f"tierflow forget: {what} customer {user_id!r}: {keys:,} Redis keys at {ctx.settings.redis_display()},"
          f" {rows:,} archive rows; the erasure is recorded on {ctx.settings.topics.erasures} (later events of"
          " this id start a new customer)", file=sys.stderr)
    confirm(f"Erase {user_id!r} now?", f"{again} --yes", assume_yes)

    refuse_if_running(ctx, again)  # the last moment before anything changes
    erasure = unfinished or topic.new_erasure(ctx.settings, user_id, int(time.time() * 1000))
    if unfinished is None:
        topic.publish(ctx.settings, erasure, ctx.config.worker.delivery_timeout_s)
    erased = store.erase(user_id)
    taken = {} if backend is None else archive_rows.erase_user(backend, user_id, erasure.erasure_id)
    report = {
        "user_id": user_id, "erasure_id": erasure.erasure_id, "erased_at": erasure.erased_at,
        "resumed": unfinished is not None, "topic": ctx.settings.topics.erasures, "redis_keys": erased.keys,
        "population_counted": erased.counted, "reservations": erased.reservations, "archive_rows": taken,
    }
    if as_json:
        print(orjson.dumps(report).decode())
    else:
        print(f"erased {user_id!r}: {erased.keys:,} Redis keys, {erased.reservations:,} campaign reservations,"
              f" {sum(taken.values()):,} archive rows; erasure {erasure.erasure_id} on {report['topic']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "forget", help="erase a customer from Redis, the archive and replays (stop the workers first)",
        description=f"Exit status: 0 erased, 1 an error, 2 a bad id, {EXIT_WORKER_RUNNING} a worker of the group"
                    " is running, 4 not confirmed.",
    )
    parser.add_argument("user_id", metavar="ID", help="the customer's user id")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--json", action="store_true", help="print what was erased as JSON")
    parser.set_defaults(func=_forget)
