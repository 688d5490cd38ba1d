"""`tierflow lag [--wait] [--timeout S]`."""

from __future__ import annotations

import argparse
import sys

import orjson

from tierflow.pipeline.cli.errors import CliError
from tierflow.pipeline.config.context import from_args
from tierflow.pipeline.kafka import lag


def _lag(args: argparse.Namespace) -> int:
    ctx = from_args(args)
    if args.wait:
        def progress(remaining: int) -> None:
            sys.stderr.write(f"\rwaiting for the worker: {remaining} records to go   ")
            sys.stderr.flush()
        try:
            rows = lag.wait(ctx.settings, args.timeout, progress)
        except TimeoutError as exc:
            raise CliError(str(exc), 1) from exc
        finally:
            sys.stderr.write("\n")
    else:
        rows = lag.measure(ctx.settings)
    if args.json:
        print(orjson.dumps({
            "group": ctx.settings.group_id,
            "total": sum(r.lag for r in rows),
            "partitions": [
                {"topic": r.topic, "partition": r.partition, "committed": r.committed,
                 "end": r.end, "lag": r.lag} for r in rows
            ],
        }).decode())
        return 0
    print(f"group {ctx.settings.group_id}: total lag {sum(r.lag for r in rows)}")
    for r in rows:
        print(f"  {r.topic}[{r.partition}]  committed {r.committed}  end {r.end}  lag {r.lag}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("lag", help="consumer lag of the worker on the input topics")
    parser.add_argument("--wait", action="store_true", help="return once everything produced so far is processed")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="S", help="give up after S seconds (exit 1)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=_lag)
