"""Tiering's Redis side, the orchestrator: read each user's state, evaluate it
(pure, evaluate.py), commit the result exactly once (tiers.lua beside this module),
and run the timer. It builds on keys.py (where everything lives), population.py
(counts, snapshots, who a means shift moves), schedule.py (who time decay moves)
and outbox.py (the change records for the publisher).

Exactly once, across crashes and replays:
1. `commit` (user tag) compares the new evaluation with the stored one; for each
   changed dimension it bumps that dimension's version and appends a change
   record, and it records the population side of the change (scores, values,
   boundary, raw values, old -> new) as a pending delta numbered by the user's
   delta counter. The same evaluation again changes nothing and emits nothing.
   It refuses (stale) an evaluation made from a state that has since moved on
   (the user's applied-event count differs), from an earlier instant than the
   stored one, or against an older population snapshot; the store then re-reads
   and re-evaluates. So concurrent evaluators (ingest, timer, sweep) never
   overwrite a newer result with an older one.
2. `apply` (shard tag) applies a user's deltas in seq order, only those above the
   user's last applied seq (kept in `:applied`), so a delta re-sent after a crash
   is skipped and the counts stay exact. Deltas of one user are applied in order
   because `commit` returns every pending delta and only applied ones are cleared.
   (A per-user high-water mark instead of a set of applied delta ids keeps this
   bounded by the number of users, not of changes.)
3. The applied deltas are dropped from the user's pending hash by the user's next
   `commit` (the store remembers each user's applied mark until then), so clearing
   costs no call of its own. Past `worker.tier_clears_users` remembered users the
   oldest are cleared by a `clear` call riding on the next read. A delta left
   behind (a crash, a restart) is at or below the applied mark, so it is skipped by
   the apply and by erasure, and cleared after the user's next evaluation.
A crash between 1 and 2 leaves the delta pending; whatever re-triggers the
evaluation (the ingest replay, the still-due schedule entry, the unfinished
sweep, re-running `reevaluate_all`) commits again, finds nothing new, and
flushes it. A batch therefore costs three round trips: read, commit, apply. A
large batch reads and commits in slices (`worker.tier_slice_users`), two at a
time, so Redis works on one while Python evaluates the other.

The state store does not keep when a SKU was bought, so `on_batch` records the
paid-membership orders from the batch's events (`load` stores them).

The timer (`tick`) re-evaluates the users whose next boundary passed (reason
time_decay), takes a new population snapshot every
`population.snapshot_interval_ms` and sweeps the users it moves (means_shift),
each in bounded slices of `decay.due_batch` users a tick.

Clocks: every entry point takes `now_ms` from the caller.
"""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import msgspec
import orjson

from tierflow.pipeline import lua
from tierflow.pipeline.config.domain import Config
from tierflow.pipeline.errors import TierflowError
from tierflow.pipeline.ingest.validate import ValidEvent
from tierflow.pipeline.lua import Pipeline, Redis
from tierflow.pipeline.state.summary import AsOfOutOfRange, RawState, UserKeys, iso, summarize
from tierflow.pipeline.tiering import calls
from tierflow.pipeline.tiering.config import check_against
from tierflow.pipeline.tiering.evaluate import TRACKED, Evaluation, evaluate
from tierflow.pipeline.tiering.explain import explain_graced
from tierflow.pipeline.tiering.grace import Graced, apply_grace, encode_holds
from tierflow.pipeline.tiering.keys import SNAPSHOT_KEY, ShardKeys, Shards, TierKeys
from tierflow.pipeline.tiering.membership import PaidPurchase
from tierflow.pipeline.tiering.outbox import ChangeOutbox, decode_changes
from tierflow.pipeline.tiering.population import PopulationShift, PopulationStats, Snapshot
from tierflow.pipeline.tiering.rfm import DIMENSIONS, Population
from tierflow.pipeline.tiering.schedule import DecaySchedule
from tierflow.schemas.events import Purchase, Refund
from tierflow.schemas.tier_changes import EVENT_REASONS, REASONS, Reason, TierChange

# A committed user's pending population delta: user, delta seq, the delta (JSON).
Delta = tuple[str, int, str]

# Re-evaluation rounds before giving up on a user whose state keeps moving under us.
MAX_ATTEMPTS = 8


class ConcurrentEvaluation(TierflowError, RuntimeError):
    """A user's state kept changing between read and commit."""


def basis_of(profile: Mapping[str, str]) -> int:
    """Events applied to the user (pipeline/state/apply.lua's counters; rv: refunds applied and
    orders they took out); tiers.lua counts the same way."""
    return sum(int(profile.get(f, "0")) for f in ("nb", "nc", "ni", "pc", "rv"))


def membership_orders(events: Iterable[ValidEvent], sku: str) -> dict[str, list[list[object]]]:
    """Per user, [event_id, ts_ms, qty] of each purchase holding the membership SKU."""
    out: dict[str, list[list[object]]] = defaultdict(list)
    for item in events:
        event = item.event
        if isinstance(event, Purchase):
            qty = sum(line.qty for line in event.items if line.sku == sku)
            if qty:
                out[event.user_id].append([event.event_id, item.ts_ms, qty])
    return out


@dataclass
class Loaded:
    raw: RawState
    tier: dict[str, str]
    paid: list[PaidPurchase]


@dataclass
class Result:
    """What an evaluation call did."""

    # Users evaluated and committed.
    evaluated: int = 0
    # Their evaluations as committed (one call's worth; `merge` keeps only counts
    # and changes, so a sweep over millions of users stays small).
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    # Change records appended by this call.
    appended: list[TierChange] = field(default_factory=list)
    # The evaluated users with unacknowledged changes, and how many each has (records a
    # crashed run left unpublished included): the publisher reads them from the outbox.
    outbox: dict[str, int] = field(default_factory=dict)
    # When the oldest population snapshot a committed evaluation used was taken (None: none).
    oldest_snapshot_ms: int | None = None

    def merge(self, other: Result) -> None:
        self.evaluated += other.evaluated
        self.appended += other.appended
        self.outbox.update(other.outbox)
        self.saw_snapshot(other.oldest_snapshot_ms)

    def saw_snapshot(self, taken_ms: int | None) -> None:
        if taken_ms is not None:
            oldest = self.oldest_snapshot_ms
            self.oldest_snapshot_ms = taken_ms if oldest is None else min(oldest, taken_ms)


@dataclass
class TickResult:
    decayed: Result = field(default_factory=Result)
    shift: PopulationShift | None = None
    swept: Result = field(default_factory=Result)


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    items = iter(flat)
    return dict(zip(items, items, strict=True))


def chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lists of `size` items, the last one shorter (itertools.batched is Python 3.12)."""
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class TierStore:
    """Evaluates and commits users' tiers; the one entry point of tiering's Redis side."""

    def __init__(self, client: Redis, config: Config) -> None:
        check_against(config.state.windows_days, config.tiering)
        self.client = client
        self.config = config
        self.tiering = config.tiering
        self.shards = Shards.of(self.tiering.population.shards)
        self.stats = PopulationStats(client, self.shards, self.tiering)
        self.schedule = DecaySchedule(client, self.shards)
        self.outbox = ChangeOutbox(client, self.shards)
        self._script = lua.register(client, __file__, "tiers")
        self._scripts = [self._script]
        # Users whose deltas the population applied, with the highest seq, oldest first:
        # cleared from their pending hashes by their next commit (ingest and timer threads
        # share this store).
        self._clears: dict[str, int] = {}
        self._clears_lock = threading.Lock()
        # Lives as long as the store: evaluates one slice while Redis works on the other.
        self._slices = ThreadPoolExecutor(2, thread_name_prefix="tier-slice")

    # --- evaluation ---------------------------------------------------------------------------

    def on_batch(self, events: Sequence[ValidEvent], now_ms: int) -> Result:
        """Ingest hook, after the batch's events are applied to the state (and before
        the offsets are committed): re-evaluate every user in it (reason event),
        recording their paid-membership orders. Users with a refund in the batch are
        evaluated with reason refund, their newest refund named as the trigger. Safe to call
        again for a replayed batch. The changes wait in the users' outboxes (`self.outbox`)
        for the publisher."""
        event_times: dict[str, int] = {}
        # Each user's newest event, or newest refund: what the records' explanations name as the trigger.
        triggers: dict[str, tuple[str, str]] = {}
        refunds: dict[str, int] = {}
        for item in events:
            user = item.event.user_id
            trigger = (item.event.event_id, item.event.__struct_config__.tag)
            if isinstance(item.event, Refund):
                if item.ts_ms >= refunds.get(user, item.ts_ms):
                    triggers[user] = trigger
                refunds[user] = max(refunds.get(user, item.ts_ms), item.ts_ms)
            elif user not in refunds and item.ts_ms >= event_times.get(user, item.ts_ms):
                triggers[user] = trigger
            event_times[user] = max(event_times.get(user, item.ts_ms), item.ts_ms)
        paid = membership_orders(events, self.tiering.membership.paid.sku)
        result = Result()
        by_reason: dict[Reason, list[str]] = {
            "event": [u for u in event_times if u not in refunds], "refund": [*refunds]
        }
        for reason, users in by_reason.items():
            if users:
                part = self.evaluate_users(users, now_ms, reason, event_times=event_times, paid=paid, triggers=triggers)
                result.merge(part)
                result.evaluations.update(part.evaluations)
        return result

    def evaluate_users(
        self,
        user_ids: Iterable[str],
        now_ms: int,
        reason: Reason,
        *,
        event_times: Mapping[str, int] | None = None,
        paid: Mapping[str, list[list[object]]] | None = None,
        triggers: Mapping[str, tuple[str, str]] | None = None,
    ) -> Result:
        """Evaluate users as of now_ms (or their stored instant, if later), commit
        the changes and apply the population deltas. Users without state are skipped.
        Three round trips when nothing is stale: read, commit, apply."""
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        result = Result()
        deltas: list[Delta] = []
        todo = list(dict.fromkeys(user_ids))
        overflow = self._take_overflow()
        for _ in range(MAX_ATTEMPTS):
            if not todo:
                break
            todo = self._rounds(
                todo, now_ms, reason, event_times or {}, paid or {}, result, deltas, overflow, triggers or {}
            )
            overflow = {}
        if todo:
            raise ConcurrentEvaluation(f"state kept moving for {len(todo)} users, e.g. {todo[0]!r}")
        self._flush(deltas)
        # A snapshot taken after this call read its own may have run its sweep before the
        # flush above put these users in their new score sets, and so missed them: they are
        # evaluated again against it, as a means shift. Rare: snapshots come seconds apart.
        # With nothing flushed, no score set changed, so the sweep found them where they were.
        if deltas and result.oldest_snapshot_ms is not None and self.stats.taken_ms() > result.oldest_snapshot_ms:
            again = self.evaluate_users(list(result.evaluations), now_ms, "means_shift")
            result.merge(again)
            result.evaluations.update(again.evaluations)
            result.oldest_snapshot_ms = again.oldest_snapshot_ms
        return result

    def _rounds(
        self,
        users: list[str],
        now_ms: int,
        reason: Reason,
        event_times: Mapping[str, int],
        paid: Mapping[str, list[list[object]]],
        result: Result,
        deltas: list[Delta],
        overflow: Mapping[str, int],
        triggers: Mapping[str, tuple[str, str]],
    ) -> list[str]:
        """One round over the users; more than `worker.tier_slice_users` go in slices, two
        at a time on two threads, so one evaluates while Redis reads or commits the other's
        (the slices are distinct users, each committed on its own). Returns the users to
        evaluate again (stale)."""
        slices = list(chunks(users, self.config.worker.tier_slice_users))
        if len(slices) == 1:
            return self._round(users, now_ms, reason, event_times, paid, result, deltas, overflow, triggers)
        parts = [(Result(), list[Delta]()) for _ in slices]
        rounds = [self._slices.submit(self._round, chunk, now_ms, reason, event_times, paid, part, part_deltas,
                                      overflow if n == 0 else {}, triggers)
                  for n, (chunk, (part, part_deltas)) in enumerate(zip(slices, parts, strict=True))]
        retry = [user for done in rounds for user in done.result()]
        for part, part_deltas in parts:
            result.merge(part)
            result.evaluations.update(part.evaluations)
            deltas += part_deltas
        return retry

    def _round(
        self,
        users: list[str],
        now_ms: int,
        reason: Reason,
        event_times: Mapping[str, int],
        paid: Mapping[str, list[list[object]]],
        result: Result,
        deltas: list[Delta],
        overflow: Mapping[str, int] | None = None,
        triggers: Mapping[str, tuple[str, str]] | None = None,
    ) -> list[str]:
        loaded, snapshot = self._load(users, paid, overflow or {})
        evaluated: list[tuple[str, Loaded, Graced, int]] = []
        for user in users:
            state = loaded.get(user)
            if state is None:
                continue
            # An instant never goes back for a user: two clocks (workers, timer) may disagree.
            as_of = max(now_ms, int(state.tier.get("asof", "-1")))
            try:
                evaluation = self._evaluate(user, state, snapshot.population, as_of)
            except AsOfOutOfRange:
                # A clock far behind this user's history (e.g. an event-time watermark
                # during a backfill): evaluate as of their newest event instead.
                as_of = max(as_of, int(state.raw.profile["ls"]))
                evaluation = self._evaluate(user, state, snapshot.population, as_of)
            event_time = self._event_time(reason, state, evaluation, event_times.get(user))
            evaluated.append((user, state, apply_grace(evaluation, state.tier, event_time, self.tiering), event_time))

        marks = self._take_clears(user for user, *_ in evaluated)

        def commit_all(pipe: Pipeline) -> None:
            for user, state, graced, event_time in evaluated:
                self._commit(pipe, user, state, graced, snapshot, reason, event_time, (triggers or {}).get(user),
                             marks.get(user, 0))

        retry: list[str] = []
        replies = calls.run(self.client, self._scripts, commit_all)
        for (user, _state, graced, _time), (status, appended, pending, waiting) in zip(
            evaluated, replies, strict=True
        ):
            if status == "stale":
                retry.append(user)
                continue
            result.evaluated += 1
            result.evaluations[user] = graced.evaluation
            result.saw_snapshot(snapshot.taken_ms)
            deltas += ((user, int(seq), text) for seq, text in zip(pending[::2], pending[1::2], strict=True))
            if appended:
                result.appended += decode_changes(appended)
            if waiting:
                result.outbox[user] = waiting
        return retry

    def _load(
        self, users: list[str], paid: Mapping[str, list[list[object]]], clears: Mapping[str, int] | None = None
    ) -> tuple[dict[str, Loaded], Snapshot]:
        """The users' state, stored tiers and paid orders, and the population snapshot, in
        one round trip that also clears the applied deltas of other users (`clears`)."""
        clears = clears or {}

        def build(pipe: Pipeline) -> None:
            for user, seq in clears.items():
                calls.call(pipe, self._script, [TierKeys.of(user).pending], ["clear", seq])
            for user in users:
                keys = UserKeys.of(user)
                tier = TierKeys.of(user)
                calls.call(
                    pipe, self._script,
                    [keys.profile, keys.days, keys.categories, keys.skus, keys.channels, tier.tier, tier.paid],
                    ["load", orjson.dumps(paid.get(user, []))],
                )
            pipe.hgetall(SNAPSHOT_KEY)

        *rows, snapshot = calls.run(self.client, self._scripts, build)[len(clears):]
        out: dict[str, Loaded] = {}
        for user, row in zip(users, rows, strict=True):
            if not row[0]:
                continue
            profile, days, cats, skus, chans, tier, paid_orders = (_pairs(r) for r in row)
            purchases = []
            for value in paid_orders.values():
                ts, qty = value.split(":")
                purchases.append(PaidPurchase(int(ts), int(qty)))
            out[user] = Loaded(RawState(profile, days, cats, skus, chans), tier, purchases)
        return out, Snapshot.of(snapshot)

    def _evaluate(self, user: str, state: Loaded, population: Population, as_of: int) -> Evaluation:
        summary = summarize(
            user, state.raw, as_of, self.config.state.windows_days, self.config.state.retention_days
        )
        days = [int(k[1:]) for k in state.raw.days if k.startswith("c")]
        return evaluate(
            summary, population, self.tiering, as_of, paid_purchases=state.paid, purchase_days=days
        )

    @staticmethod
    def _event_time(reason: Reason, state: Loaded, evaluation: Evaluation, given: int | None) -> int:
        if given is not None:
            return given
        if reason in EVENT_REASONS and "ls" in state.raw.profile:
            return int(state.raw.profile["ls"])
        if reason == "time_decay" and state.tier["nb"]:
            return min(int(state.tier["nb"]), evaluation.as_of_ms)
        return evaluation.as_of_ms

    def _commit(
        self, pipe: Pipeline, user: str, state: Loaded, graced: Graced,
        snapshot: Snapshot, reason: Reason, event_time_ms: int, trigger: tuple[str, str] | None,
        applied_seq: int = 0,
    ) -> None:
        """Commit the evaluation as graced (held downgrades kept), with the explanations of
        what changes and the will_downgrade notices due, clearing the user's deltas up to
        `applied_seq` (applied by the population)."""
        keys = TierKeys.of(user)
        e = graced.evaluation
        why, notices = explain_graced(graced, state.tier, snapshot.population, self.tiering, trigger)
        scores = {"r": e.scores.r, "f": e.scores.f, "m": e.scores.m} if e.scores else None
        raw = {dim: str(e.raw.of(dim)) for dim in DIMENSIONS} if e.raw is not None else None
        calls.call(
            pipe, self._script, [keys.tier, keys.outbox, keys.pending, UserKeys.of(user).profile],
            [
                "commit", user, basis_of(state.raw.profile), e.as_of_ms, reason, iso(event_time_ms),
                orjson.dumps(e.values()), orjson.dumps(scores), orjson.dumps(raw),
                "" if e.next_boundary_ms is None else str(e.next_boundary_ms),
                msgspec.json.encode(e),
                msgspec.json.encode({"points": e.membership.points, "repurchases": e.lifecycle.repurchases,
                                     "why": why}),
                snapshot.taken_ms, state.tier.get("holds", ""), encode_holds(graced.holds),
                msgspec.json.encode(notices), applied_seq,
            ],
        )

    def _flush(self, deltas: Iterable[Delta]) -> None:
        """Apply pending deltas to the population (once each) in one round trip. Clearing
        them from the users' pending hashes rides on the users' next commits: a delta left
        there is at or below the shard's applied mark, which every reader of it (the apply,
        erasure) skips."""
        by_shard: dict[ShardKeys, dict[tuple[str, int], str]] = defaultdict(dict)
        for user, seq, text in deltas:
            by_shard[self.shards.holding(user)][(user, seq)] = text
        if not by_shard:
            return

        def build(pipe: Pipeline) -> None:
            for shard, items in by_shard.items():
                ordered = ",".join(items[k] for k in sorted(items))
                calls.call(pipe, self._script, shard.as_list(), ["apply", f"[{ordered}]"])

        applied = {user: int(seq) for flat in calls.run(self.client, self._scripts, build)
                   for user, seq in _pairs(flat).items()}
        with self._clears_lock:
            for user, seq in applied.items():
                # Re-inserted, so that the dict stays oldest first.
                self._clears[user] = max(seq, self._clears.pop(user, 0))

    def _take_clears(self, users: Iterable[str]) -> dict[str, int]:
        """The applied marks of these users, for their commits to clear."""
        with self._clears_lock:
            return {user: seq for user in users if (seq := self._clears.pop(user, 0))}

    def _take_overflow(self) -> dict[str, int]:
        """The oldest applied marks past `worker.tier_clears_users`, cleared by calls of their own."""
        with self._clears_lock:
            excess = len(self._clears) - self.config.worker.tier_clears_users
            if excess <= 0:
                return {}
            oldest = list(itertools.islice(self._clears, excess))
            return {user: self._clears.pop(user) for user in oldest}

    def preview(self, user_id: str, as_of_ms: int) -> Evaluation | None:
        """Evaluate as of any instant without committing (e.g. `tierflow user --as-of`).
        Raises AsOfOutOfRange (pipeline/state/summary.py) past the retained history."""
        loaded, snapshot = self._load([user_id], {})
        state = loaded.get(user_id)
        return None if state is None else self._evaluate(user_id, state, snapshot.population, as_of_ms)

    def stored(self, user_id: str) -> Evaluation | None:
        """The evaluation last committed for the user."""
        doc = self.client.hget(TierKeys.of(user_id).tier, "doc")
        return None if doc is None else msgspec.json.decode(doc, type=Evaluation)

    def versions(self, user_id: str) -> dict[str, int]:
        tier = self.client.hgetall(TierKeys.of(user_id).tier)
        return {dim: int(tier.get(f"n:{dim}", "0")) for dim in TRACKED}

    # --- the timer ----------------------------------------------------------------------------

    def tick(self, now_ms: int, cadence_ms: int | None = None) -> TickResult:
        """The timer, one bounded slice of each kind of time-based work: re-evaluate up to
        `decay.due_batch` due users (time_decay); snapshot the population when the interval
        passed; sweep the next slice of the users a snapshot moves (means_shift). Nothing
        is held between slices: ingest commits run alongside, and the stale refusal
        orders the two."""
        result = TickResult()
        due = self.schedule.due(now_ms, self.tiering.decay.due_batch)
        if due:
            result.decayed = self.evaluate_users(
                [u for u, _ in due], now_ms, "time_decay", event_times=dict(due)
            )
            self.schedule.drop_erased(u for u, _ in due if u not in result.decayed.evaluations)
        # The snapshot cadence may run on another clock than evaluations: on event time a
        # backfill's clock stands still between events while the population moves on.
        cadence = now_ms if cadence_ms is None else cadence_ms
        if self.stats.snapshot_due(cadence):
            result.shift = self.stats.snapshot_means(now_ms, cadence)
        result.swept = self.sweep_slice(now_ms)
        return result

    def sweep_slice(self, now_ms: int, reason: Reason = "means_shift") -> Result:
        """Re-evaluate the next slice of the snapshot's pending sweep (`decay.due_batch`
        users examined at most) and record it as done."""
        step = self.stats.sweep_slice(self.tiering.decay.due_batch)
        if step is None:
            return Result()
        result = self.evaluate_users(step.users, now_ms, reason)
        self.stats.advance(step)
        return result

    def sweep(self, now_ms: int, reason: Reason = "means_shift") -> Result:
        """The whole pending sweep, slice after slice (for tools; the timer takes one slice
        a tick). A user in several sets is simply evaluated twice (the second finds nothing
        to change)."""
        result = Result()
        while (step := self.stats.sweep_slice(self.tiering.decay.due_batch)) is not None:
            result.merge(self.evaluate_users(step.users, now_ms, reason))
            self.stats.advance(step)
        return result

    def reevaluate_all(self, user_ids: Iterable[str], now_ms: int) -> Result:
        """After a configuration change: re-score everyone (reason config_change),
        then re-snapshot the population and sweep the users it moves. The changes wait
        in the outboxes (`self.outbox`) for the worker to publish. Safe to re-run."""
        result = Result()
        for chunk in chunks(user_ids, self.tiering.decay.due_batch):
            result.merge(self.evaluate_users(chunk, now_ms, "config_change"))
        self.stats.snapshot_means(now_ms)
        result.merge(self.sweep(now_ms, "config_change"))
        return result

    def report(self) -> dict[str, object]:
        """`tierflow segments --json`: counts per value of every dimension from the
        stored tiers, and the means in use."""
        return self.stats.report()
