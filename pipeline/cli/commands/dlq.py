"""`tierflow dlq`: what the dead-letter topic holds, re-sending records after a fix,
and `tierflow validate FILE`: the worker's own checks on a JSONL file, offline."""

from __future__ import annotations

import argparse
import base64
import re
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import orjson

from tierflow.pipeline.cli.errors import CliError
from tierflow.pipeline.cli.progress import progress
from tierflow.pipeline.config.context import Context, from_args
from tierflow.pipeline.erasure import topic as erasures
from tierflow.pipeline.ingest.validate import Limits, parse_record, parse_ts
from tierflow.pipeline.kafka.publisher import Publisher
from tierflow.pipeline.kafka.reader import read_record, read_topic
from tierflow.schemas.dead_letters import DeadLetter

_DURATION = re.compile(r"^(?P<n>\d+)(?P<unit>[smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# Text of the original record shown per dead letter in the table (the JSON has it whole).
_SHOWN_CHARS = 80
EXIT_INVALID = 1
OMITTED = "(too big to quote: the record is at its source offset)"


def since_ms(text: str | None, now: datetime | None = None) -> int | None:
    """`--since`: a duration back from now (30m, 12h, 7d) or an RFC 3339 time or date."""
    if text is None:
        return None
    now = now or datetime.now(UTC)
    match = _DURATION.match(text)
    if match:
        delta = timedelta(**{_UNITS[match["unit"]]: int(match["n"])})
        return int((now - delta).timestamp() * 1000)
    try:
        return parse_ts(text if "T" in text else f"{text}T00:00:00Z")
    except ValueError:
        raise CliError(f"--since {text!r}: expected a duration like 30m, 12h, 7d or an RFC 3339 time", 2) from None


def dead_letters(ctx: Context, since: int | None, reason: str | None) -> list[tuple[DeadLetter, bytes]]:
    """(dead letter, original record bytes) oldest first, filtered by reason (a prefix
    ending in ':' matches every reason under it, e.g. `schema:`)."""
    decoder = msgspec.json.Decoder(DeadLetter)
    found = []
    for msg in read_topic(ctx.settings, ctx.settings.topics.dlq, since):
        try:
            letter = decoder.decode(msg.value())
        except msgspec.DecodeError:
            continue  # not written by tierflow
        if reason is None or letter.reason == reason or (reason.endswith(":") and letter.reason.startswith(reason)):
            found.append((letter, base64.b64decode(letter.original_b64)))
    return sorted(found, key=lambda item: _order(item[0]))


def _order(letter: DeadLetter) -> tuple[str, str, int, int, int]:
    source = letter.source
    index = -1 if letter.event_index is None else letter.event_index
    return (letter.rejected_at, source.topic, source.partition, source.offset, index)


def _as_json(letter: DeadLetter, original: bytes) -> dict[str, object]:
    row = msgspec.to_builtins(letter)
    del row["original_b64"]
    try:
        row["original"] = orjson.loads(original)
    except orjson.JSONDecodeError:
        row["original"] = original.decode("utf-8", "replace")
    return row


def _list(args: argparse.Namespace) -> int:
    ctx = from_args(args)
    letters = dead_letters(ctx, since_ms(args.since), args.reason)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps([_as_json(letter, original) for letter, original in letters]))
        sys.stdout.write("\n")
        return 0
    reasons: Counter[str] = Counter()
    for letter, original in letters:
        reasons[letter.reason] += 1
        source = letter.source
        where = f"{source.topic}[{source.partition}]@{source.offset}"
        if letter.event_index is not None:
            where += f" event {letter.event_index}"
        text = OMITTED if letter.original_omitted else original.decode("utf-8", "replace")
        shown = text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"
        print(f"{letter.rejected_at}  {letter.reason:<24} {where}  key={source.key}")
        print(f"    {letter.detail}")
        print(f"    {shown}")
    summary = ", ".join(f"{reason} {n}" for reason, n in reasons.most_common()) or "none"
    print(f"{sum(reasons.values())} dead letters ({summary})")
    return 0


def _replay(args: argparse.Namespace) -> int:
    ctx = from_args(args)
    inputs = set(ctx.settings.topics.inputs)
    # Several events of one batch record are dead-lettered apart: send the record once.
    records: dict[tuple[str, int, int], tuple[str, bytes | None, bytes]] = {}
    missing = 0
    # An erased customer's records (keyed by their id) are not sent again: that would bring them back.
    erased = erasures.load(ctx.settings)
    for letter, original in dead_letters(ctx, since_ms(args.since), args.reason):
        source = letter.source
        where = (source.topic, source.partition, source.offset)
        if source.topic not in inputs or where in records or erasures.skipped(erased, source.key or "", *where):
            continue
        key = source.key.encode() if source.key is not None else None
        if letter.original_omitted:  # too big to quote: read it back from where it came from
            msg = read_record(ctx.settings, *where)
            if msg is None:
                missing += 1
                continue
            key, original = msg.key(), msg.value() or b""
        records[where] = (source.topic, key, original)
    if missing:
        print(f"{missing} records are no longer in their input topics (retention) and cannot be sent again",
              file=sys.stderr)
    if not args.yes:
        print(f"{len(records)} records would be sent again to their input topics; add --yes to send them")
        return 0
    delivery = Publisher(ctx.settings.kafka, ctx.config.worker.delivery_timeout_s).delivery()
    with progress("replaying dead letters", total=len(records)) as show:
        for done, (topic, key, value) in enumerate(records.values(), 1):
            delivery.send(topic, key, value, headers={"tierflow.replayed": "dlq"})
            show(done)
        sent = delivery.wait()
    print(f"{sent} records sent again; the worker applies what is valid now (events already applied count once)"
          " and dead-letters the rest again")
    return 0


def _validate(args: argparse.Namespace) -> int:
    ctx = from_args(args)
    path = Path(args.path)
    if not path.is_file():
        raise CliError(f"no such file: {path}", 2)
    limits = Limits.of(ctx.config.ingest)
    now_ms = int(time.time() * 1000)
    lines = valid = 0
    problems: list[dict[str, object]] = []
    with path.open("rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            value = line.rstrip(b"\r\n")
            if not value.strip():
                continue
            lines += 1
            events, rejected = parse_record(value, None, limits, now_ms)
            valid += len(events)
            problems += [
                {"line": line_no, "event_index": r.event_index, "reason": r.reason, "detail": r.detail}
                for r in rejected
            ]
    if args.json:
        sys.stdout.buffer.write(orjson.dumps({"lines": lines, "valid_events": valid, "rejected": problems}))
        sys.stdout.write("\n")
    else:
        for problem in problems:
            index = f" event {problem['event_index']}" if problem["event_index"] is not None else ""
            print(f"line {problem['line']}{index}: {problem['reason']}: {problem['detail']}")
        counts = Counter(str(p["reason"]) for p in problems)
        summary = ", ".join(f"{reason} {n}" for reason, n in counts.most_common())
        print(f"{lines} records, {valid} valid events, {len(problems)} rejected" + (f" ({summary})" if summary else ""))
    return EXIT_INVALID if problems else 0


def register(sub: argparse._SubParsersAction) -> None:
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--since", metavar="T", help="only dead letters from T: 30m, 12h, 7d or an RFC 3339 time")
    filters.add_argument("--reason", metavar="R", help="only this reason (a prefix ending in ':' matches a group)")
    dlq = sub.add_parser(
        "dlq", parents=[filters], help="list dead letters with their reasons and original records",
        description="Lists touch.dlq. `tierflow dlq replay` sends the original records again after a fix.",
    )
    dlq.add_argument("--json", action="store_true", help="a JSON array of dead letters with the original decoded")
    dlq.set_defaults(func=_list)
    actions = dlq.add_subparsers(dest="dlq_action", metavar="ACTION")
    replay = actions.add_parser("replay", parents=[filters], help="send the original records again")
    replay.add_argument("--yes", action="store_true", help="send (without it: say how many would be sent)")
    replay.set_defaults(func=_replay)

    validate = sub.add_parser(
        "validate", help="check a JSONL file offline with the worker's own rules and reasons",
        description="Exit status: 0 every event valid, 1 some rejected (each listed with its reason), 2 no file.",
    )
    validate.add_argument("path", help="JSONL file: one event or batch record per line")
    validate.add_argument("--json", action="store_true", help="a JSON summary with every rejection")
    validate.set_defaults(func=_validate)
