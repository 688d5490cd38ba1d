"""`tierflow produce PATH|-`: stream JSONL events into the input topics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tierflow.pipeline.cli.errors import CliError
from tierflow.pipeline.cli.progress import progress
from tierflow.pipeline.config.context import from_args
from tierflow.pipeline.kafka.sender import EventSender, send_lines
from tierflow.pipeline.kafka.topics import ensure_topics


def _produce(args: argparse.Namespace) -> int:
    ctx = from_args(args)
    if args.path == "-":
        lines = sys.stdin.buffer
        total = None
    else:
        path = Path(args.path)
        if not path.is_file():
            raise CliError(f"no such file: {path}", 2)
        total = sum(1 for _ in path.open("rb"))
        lines = path.open("rb")
    ensure_topics(ctx.settings)
    sender = EventSender(ctx.settings, batch=args.batch)
    with progress("produced", total) as show:
        report = send_lines(sender, lines, show)
    print(
        f"lines {report.lines}  events {report.events}  records {report.records}  "
        f"delivered {report.delivered}  failed {report.failed}  skipped {len(report.skipped)}"
    )
    for line_no, why in report.skipped[:10]:
        print(f"  line {line_no}: skipped: {why}", file=sys.stderr)
    for error in report.errors:
        print(f"  delivery error: {error}", file=sys.stderr)
    if report.failed:
        raise CliError(f"{report.failed} records were not delivered", 1)
    return 3 if report.skipped else 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "produce", help="send JSONL events (one per line) to the input topics, routed by type",
        description="Exit status: 0 all delivered, 1 delivery failure, 3 some lines could not be routed.",
    )
    parser.add_argument("path", help="JSONL file, or - for standard input")
    parser.add_argument(
        "--batch", type=int, default=1, metavar="N",
        help="group up to N consecutive events of a user into one batch record (default 1: single events)",
    )
    parser.set_defaults(func=_produce)
