"""`tierflow rebuild [--yes]`: tierflow's Redis state rebuilt from Kafka, after Redis
lost it (no persistence, a flushed or replaced server).

Refuses while any worker of the group runs (members in its consumer groups).
Otherwise, after a confirmation:

1. reads `reward.grants` and `tier.changes` from their beginning: the reward
   ledger (pipeline/rewards/restore.py) and the last published tier versions
   (pipeline/tiering/restore.py);
2. wipes tierflow's keys from Redis and writes the ledger back;
3. replays the retained input into the customers' state, validated and applied
   as the worker does;
4. evaluates every customer on the complete state and puts their tiers back on
   the published history: versions continue, and only a value that differs from
   the last one published is published (by the next worker);
5. resets the worker group's input offsets to the earliest retained.

Erased customers (`tierflow forget`, the compacted `tierflow.erasures` topic) are left out
of every step: what they left on the topics below their erasure's marks is skipped, except
what campaigns spent on them, which stays counted (pipeline/erasure/replay.py).

The next `tierflow worker` replays the input once more: the state skips every
event (already applied), the tiers find nothing new, and the rewards stage grants
only what never reached `reward.grants` (every idempotency key is restored); it
also counts the referral invites again. What is older than the input topics'
retention is gone from the state: see docs/operations.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import msgspec
import redis
from confluent_kafka import Message

from tierflow.pipeline import keyspace
from tierflow.pipeline.cli.confirm import confirm as ask
from tierflow.pipeline.cli.errors import CliError
from tierflow.pipeline.cli.progress import progress
from tierflow.pipeline.config.context import Context, from_args
from tierflow.pipeline.erasure import topic as erasure_topic
from tierflow.pipeline.erasure.replay import ErasedSpend
from tierflow.pipeline.ingest.validate import Limits, ValidEvent, parse_record
from tierflow.pipeline.kafka import groups
from tierflow.pipeline.kafka.reader import read_topic
from tierflow.pipeline.lanes import Lanes
from tierflow.pipeline.lua import Redis
from tierflow.pipeline.rewards import restore as ledger_restore
from tierflow.pipeline.rewards.restore import LedgerFold
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.state.summary import encode
from tierflow.pipeline.tiering import restore as tier_restore
from tierflow.pipeline.tiering.restore import Published, TierRebase
from tierflow.pipeline.tiering.store import TierStore, membership_orders
from tierflow.schemas import reward_grants
from tierflow.schemas.erasures import Erasure
from tierflow.schemas.tier_changes import TierChange

# Exit status besides 0 (rebuilt), 1 (an error) and 4 (not confirmed, cli/confirm.py).
EXIT_WORKER_RUNNING = 3
# How often to look again at the groups' members while a stopped worker may still be listed.
MEMBERS_POLL_S = 1.0
# Every key tierflow writes starts with one of these: a customer's keys ({u:<id>}...),
# the reward indexes and campaigns ({rw}..., {rw:c:<id>}...), the population shards and
# output lanes ({tf:...}), and the global keys (tf:users, tf:tier:pop, tf:clock).
KEY_PATTERNS = tuple(keyspace.key(p) for p in ("{u:*", "{rw}*", "{rw:c:*", "{tf:*", "tf:*"))
# Keys per SCAN step and UNLINK call; users per write round trip.
WIPE_CHUNK = 1000
USER_CHUNK = 500


def worker_groups(ctx: Context) -> list[str]:
    """Every consumer group a running worker is a member of: ingest, the Faust app's own
    group (agents/app.py names it), and the archive writer."""
    group = ctx.settings.group_id
    return [group, f"{group}-agents", group + ctx.config.archive.group_suffix]


def refuse_if_running(ctx: Context, command: str = "tierflow rebuild") -> None:
    """Exit 3 while a worker of the group runs (a member in any of its groups); `command` is
    what to run again once they are stopped. The embedded archive's owner is a static member,
    which stays in the archive group for up to a session timeout after its worker stopped:
    while it is the only member left, wait for it to go before refusing."""
    archive_group = ctx.settings.group_id + ctx.config.archive.group_suffix
    deadline = time.monotonic() + ctx.config.worker.session_timeout_ms / 1000
    while running := groups.members(ctx.settings.kafka, worker_groups(ctx)):
        if set(running) != {archive_group} or time.monotonic() >= deadline:
            who = "; ".join(f"{g}: {', '.join(m)}" for g, m in running.items())
            raise CliError(f"a worker of group {ctx.settings.group_id} is running ({who}); stop every"
                           f" `tierflow worker` of the group, then run `{command}` again", EXIT_WORKER_RUNNING)
        time.sleep(MEMBERS_POLL_S)


def watermarks(ctx: Context, topics: Sequence[str]) -> dict[tuple[str, int], tuple[int, int]]:
    """(first retained, end) offsets of every partition of these topics."""
    return erasure_topic.watermarks(ctx.settings, topics)


def retained(ctx: Context, topics: Sequence[str]) -> int:
    """Records the topics hold now."""
    return sum(high - low for low, high in watermarks(ctx, topics).values())


def counted(messages: Iterable[Message], show: Callable[[int], None]) -> Iterator[Message]:
    n = 0
    for msg in messages:
        yield msg
        n += 1
        if n % 1000 == 0:
            show(n)
    show(n)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- 1. what the output topics say -------------------------------------------------------------


@dataclass
class OutputTopics:
    """What the output topics say: the reward ledger, the last published tier versions,
    and each user's lane (the partition their records are on, pipeline/lanes.py)."""

    ledger: LedgerFold
    published: dict[str, Published] = field(default_factory=dict)
    lanes: dict[str, int] = field(default_factory=dict)
    # Records of erased customers skipped (their grants count in the campaigns' totals only).
    erased: int = 0


def read_outputs(ctx: Context, erased: dict[str, Erasure]) -> OutputTopics:
    topics = ctx.settings.topics
    out = OutputTopics(LedgerFold(ctx.config.rewards))
    spend = ErasedSpend(out.ledger)

    def grant(msg: Message) -> str | None:
        record = reward_grants.decode(msg.value())
        if erasure_topic.skipped(erased, record.user_id, msg.topic(), msg.partition(), msg.offset()):
            spend.add(record)
            return None
        out.ledger.add(record)
        return record.user_id

    def change(msg: Message) -> str | None:
        record = msgspec.json.decode(msg.value(), type=TierChange)
        if erasure_topic.skipped(erased, record.user_id, msg.topic(), msg.partition(), msg.offset()):
            return None
        tier_restore.fold(out.published, record)
        return record.user_id

    for topic, add in ((topics.reward_grants, grant), (topics.tier_changes, change)):
        with progress(f"reading {topic}", retained(ctx, [topic])) as show:
            for msg in counted(read_topic(ctx.settings, topic), show):
                try:
                    user = add(msg)
                except msgspec.DecodeError as exc:  # not written by tierflow: no part of the state
                    say(f"  skipping {topic}[{msg.partition()}]@{msg.offset()}: {exc}")
                    continue
                if user is None:
                    out.erased += 1
                else:
                    out.lanes[user] = msg.partition()
    spend.finish()
    return out


def restore_lanes(ctx: Context, client: Redis, lanes: dict[str, int]) -> None:
    """Each user keeps the lane their records are on; every lane's mark is the end of its
    partitions, as read (no record there waits in an outbox)."""
    topics = ctx.settings.topics
    restored = Lanes(client, len(watermarks(ctx, [topics.inputs[0]])))
    restored.assign(lanes)
    ends: dict[int, dict[str, int]] = defaultdict(dict)
    for (topic, partition), (_low, high) in watermarks(ctx, [topics.tier_changes, topics.reward_grants]).items():
        ends[partition][topic] = high
    for lane, marks in ends.items():
        restored.advance(lane, marks)


# --- 2. wipe and write the ledger ---------------------------------------------------------------


def wipe(client: Redis) -> int:
    removed = 0
    with progress("wiping tierflow's keys") as show:
        for pattern in KEY_PATTERNS:
            batch: list[str] = []
            for key in client.scan_iter(match=pattern, count=WIPE_CHUNK):
                batch.append(key)
                if len(batch) == WIPE_CHUNK:
                    removed += client.unlink(*batch)
                    batch = []
                    show(removed)
            if batch:
                removed += client.unlink(*batch)
        show(removed)
    return removed


def write_ledger(client: Redis, fold: LedgerFold) -> None:
    users = list(fold.users)
    with progress("restoring reward ledgers", len(users)) as show:
        for start in range(0, len(users), USER_CHUNK):
            ledger_restore.write(client, fold, users[start:start + USER_CHUNK])
            show(min(start + USER_CHUNK, len(users)))
    ledger_restore.write_campaigns(client, fold)


# --- 3. the input ----------------------------------------------------------------------------------


@dataclass
class Replay:
    records: int = 0
    events: int = 0
    applied: int = 0
    set_aside: int = 0
    # Events of erased customers skipped.
    erased: int = 0
    newest_ms: int = -1
    # Per user, the paid-membership orders (tiering needs them; the state does not keep them).
    paid: dict[str, list[list[object]]] = field(default_factory=lambda: defaultdict(list))


@dataclass
class _Pending:
    """One input record's events, ready for apply.lua."""

    source: str
    events: list[ValidEvent]
    encoded: list[list[object]]


def replay_inputs(ctx: Context, store: StateStore, now_ms: int, erased: dict[str, Erasure]) -> Replay:
    """Every retained input record, validated as the worker validates it (now_ms: the
    future-timestamp rule) and applied in batches, each partition in offset order; the
    events of erased customers below their marks left out."""
    replay = Replay()
    limits = Limits.of(ctx.config.ingest)
    sku = ctx.config.tiering.membership.paid.sku
    batch: list[_Pending] = []
    inputs = ctx.settings.topics.inputs
    with progress("replaying the input into the state", retained(ctx, inputs)) as show:
        for topic in inputs:
            for msg in read_topic(ctx.settings, topic):
                replay.records += 1
                try:
                    valid, _rejected = parse_record(msg.value(), msg.key(), limits, now_ms)
                    kept = [item for item in valid if not erasure_topic.skipped(
                        erased, item.event.user_id, topic, msg.partition(), msg.offset())]
                    replay.erased += len(valid) - len(kept)
                    valid = kept
                    encoded = [encode(item.event, item.ts_ms, msg.offset(), msg.timestamp()[1]) for item in valid]
                except Exception:  # the worker dead-letters such a record (internal_error)
                    replay.set_aside += 1
                    continue
                batch.append(_Pending(f"{topic}:{msg.partition()}", valid, encoded))
                for user, orders in membership_orders(valid, sku).items():
                    replay.paid[user] += orders
                replay.events += len(valid)
                replay.newest_ms = max([replay.newest_ms, *(item.ts_ms for item in valid)])
                if len(batch) == ctx.config.ingest.batch_max_records:
                    _apply(store, batch, replay)
                    batch = []
                    show(replay.records)
        _apply(store, batch, replay)
        show(replay.records)
    return replay


def _apply(store: StateStore, batch: Sequence[_Pending], replay: Replay) -> None:
    """One round trip for the batch; should a record make it fail, record by record, setting
    aside the ones that fail alone (as the worker does). Redis going away ends the rebuild."""
    try:
        replay.applied += store.apply(_groups(batch)).count
    except redis.ConnectionError:
        raise
    except redis.RedisError:
        if len(batch) == 1:
            replay.set_aside += 1
            return
        for pending in batch:
            _apply(store, [pending], replay)


def _groups(batch: Sequence[_Pending]) -> dict[tuple[str, str], list[list[object]]]:
    grouped: dict[tuple[str, str], list[list[object]]] = defaultdict(list)
    for pending in batch:
        for item, encoded in zip(pending.events, pending.encoded, strict=True):
            grouped[(item.event.user_id, pending.source)].append(encoded)
    return grouped


# --- 4. the tiers ----------------------------------------------------------------------------------


def rebuild_tiers(ctx: Context, client: Redis, store: StateStore, published: dict[str, Published],
                  replay: Replay, now_ms: int) -> list[TierChange]:
    tiers = TierStore(client, ctx.config)
    evaluated = list(store.users())
    with progress("evaluating every customer", len(evaluated)) as show:
        tier_restore.evaluate_everyone(tiers, evaluated, now_ms, int(time.time() * 1000), replay.paid, show)
    users = list(dict.fromkeys([*evaluated, *published]))
    rebase = TierRebase(client, tiers.shards)
    pending: list[TierChange] = []
    with progress("continuing the published tier versions", len(users)) as show:
        for start in range(0, len(users), USER_CHUNK):
            pending += rebase.rebase(users[start:start + USER_CHUNK], published)
            show(min(start + USER_CHUNK, len(users)))
    return pending


# --- the command --------------------------------------------------------------------------------------


def truncated(ctx: Context) -> list[str]:
    """What retention has already cut from the topics the rebuild reads, as warnings."""
    topics = ctx.settings.topics
    cut: dict[str, int] = defaultdict(int)
    for (topic, _partition), (low, _high) in watermarks(ctx, [*topics.inputs, topics.tier_changes,
                                                             topics.reward_grants]).items():
        cut[topic] += low
    lost = {
        topics.reward_grants: "grants, redemptions and wallet changes older than what it holds are unknown:"
                              " the replay may grant again what they had granted",
        topics.tier_changes: "tier versions older than what it holds are unknown: versions may be reused",
    }
    return [f"{topic} no longer holds its first {n:,} records (retention): "
            + lost.get(topic, "customers' state is rebuilt from the events it still holds only")
            for topic, n in cut.items() if n]


def confirm(ctx: Context, assume_yes: bool) -> None:
    topics = ctx.settings.topics
    say(f"tierflow rebuild: wipes tierflow's state in Redis at {ctx.settings.redis_display()} and rebuilds it"
        f" from {topics.reward_grants}, {topics.tier_changes} and the {retained(ctx, topics.inputs):,} input"
        " records Kafka retains; the next `tierflow worker` replays the input.")
    for warning in truncated(ctx):
        say(f"warning: {warning} (docs/operations.md)")
    ask("Rebuild now?", "tierflow rebuild --yes", assume_yes)


def _rebuild(args: argparse.Namespace) -> int:
    ctx = from_args(args)
    client = connect(ctx.settings.redis_url)
    try:
        client.ping()  # before anything long: Redis must be there to be rebuilt
        return rebuild(ctx, client, args.yes)
    except redis.ConnectionError as exc:
        raise CliError(f"cannot reach Redis at {ctx.settings.redis_display()}: {exc}") from None
    finally:
        client.close()


def rebuild(ctx: Context, client: Redis, assume_yes: bool) -> int:
    refuse_if_running(ctx)
    confirm(ctx, assume_yes)
    started = time.monotonic()
    erased = erasure_topic.load(ctx.settings)
    outputs = read_outputs(ctx, erased)
    published = outputs.published
    say(f"read {outputs.ledger.records:,} reward records of {len(outputs.ledger.users):,} customers and the"
        f" tier versions of {len(published):,}"
        + (f"; {len(erased):,} erased customers left out ({outputs.erased:,} records)" if erased else ""))

    refuse_if_running(ctx)  # the last moment before anything changes
    say(f"wiped {wipe(client):,} keys")
    write_ledger(client, outputs.ledger)
    restore_lanes(ctx, client, outputs.lanes)

    now_ms = int(time.time() * 1000)
    store = StateStore.of(client, ctx.config.state)
    replay = replay_inputs(ctx, store, now_ms, erased)
    say(f"replayed {replay.records:,} input records: {replay.events:,} valid events, {replay.applied:,} applied"
        + (f", {replay.erased:,} events of erased customers skipped" if replay.erased else "")
        + (f", {replay.set_aside:,} records set aside (the worker dead-letters them)" if replay.set_aside else ""))
    if ctx.settings.clock == "event" and replay.newest_ms >= 0:
        from tierflow.agents.clock import Clock  # the runtime's clock: event time lives in Redis

        clock = Clock(ctx.settings.clock, client)
        clock.observe([replay.newest_ms])
        now_ms = clock.now()
    pending = rebuild_tiers(ctx, client, store, published, replay, now_ms)
    say(f"tiers of {store.user_count():,} customers evaluated; {len(pending):,} changes since the last"
        " published ones wait for the worker to publish them")

    offsets = groups.earliest(ctx.settings.kafka, ctx.settings.topics.inputs)
    if offsets:
        groups.commit_offsets(ctx.settings.kafka, ctx.settings.group_id, offsets)
    say(f"group {ctx.settings.group_id} starts again from the earliest retained input offsets")
    print(f"rebuilt in {time.monotonic() - started:.1f}s: start `tierflow worker`; it replays the input"
          " (nothing is applied, published or granted twice)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "rebuild", help="rebuild tierflow's Redis state from Kafka after Redis lost it (stop the workers first)",
        description="Exit status: 0 rebuilt, 1 an error, 3 a worker of the group is running, 4 not confirmed.",
    )
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(func=_rebuild)
