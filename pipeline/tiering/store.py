"""The Redis side of tiering: per-user tiers with versioned change records, exact
population counts, the time-decay schedule and the means-shift sweep.

Every Lua call (tiers.lua beside this module) touches one hash tag, so all of this
runs unchanged on Redis Cluster.

Per user (hash tag `{u:ID}`, beside the state store's keys):
  `{u:ID}:tier`    current value and version counter per dimension (v:<dim>,
                   n:<dim>), scores (s:r/f/m), raw RFM values, next boundary
                   (nb), the instant, event count and population snapshot
                   evaluated (asof, basis, pop), the change and delta counters
                   (seq, dseq), the evaluation (doc).
  `{u:ID}:outbox`  change records (JSON, schemas/tier.changes.json) not yet
                   acknowledged as published.
  `{u:ID}:pend`    population deltas not yet applied (dseq -> JSON).
  `{u:ID}:paid`    orders of the paid-membership SKU (event id -> "ts_ms:qty").
                   The state store does not keep when a SKU was bought, so
                   `on_batch` records them from the batch's events.

Population, split over `population.shards` hash tags `{tf:t:N}` by crc32(user):
  `:counts`        users per score ("r:1".."m:5") and per value of each dimension
                   ("segment:important_value", ...), and "users".
  `:applied`       user -> last applied delta seq.
  `:due`           user -> next boundary ms (the decay schedule).
  `:outbox`        user -> last change seq appended (who may have unpublished changes).
  `:s:<dim>:<n>`   users holding score n on dimension dim (for the means-shift sweep).
  `:raw:<dim>`     user -> raw value (last purchase day, purchases, cents) for quantiles.
`tf:tier:pop` holds the population snapshot every evaluation scores against.

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
   because `commit` returns every pending delta and `clear` only removes applied
   ones. (A per-user high-water mark instead of a set of applied delta ids keeps
   this bounded by the number of users, not of changes.)
3. `clear` (user tag) drops the applied deltas.
A crash between 1 and 2 leaves the delta pending; whatever re-triggers the
evaluation (the ingest replay, the still-due schedule entry, the unfinished
sweep, re-running `reevaluate_all`) commits again, finds nothing new, and
flushes it.

Publication: every evaluation returns the user's unacknowledged records
(`Result.outbox`); the publisher sends them (key: user id), and after delivery
calls `ack_changes({user: last seq sent})`, which trims the outbox and, unless a
later change arrived meanwhile, unlists the user from the shard's outbox index.
`outbox_users()` lists users whose records were appended but not acknowledged
(e.g. the publisher died after the commit): drain it at start-up and now and
then. A crash after delivery and before the ack re-sends records, which
consumers drop by (user_id, dimension, version).

Means shift: evaluations score high/low against the snapshot in `tf:tier:pop`,
not live counts, so every user is judged against the same means. `tick()`
takes a new snapshot every `population.snapshot_interval_ms` (from the exact
counts; quantile cut points from the raw-value sorted sets), works out which
scores flip high/low (and which raw-value ranges change quantile score), stores
that as the snapshot's pending sweep, re-evaluates exactly those users (per-score
sets) with reason means_shift, and then marks the sweep done. A crash mid-sweep
leaves the marker, and the next tick redoes it (idempotently). Lag: up to one
snapshot interval plus the sweep's duration.

Clocks: every entry point takes `now_ms`; `wall_clock` and `WatermarkClock`
(event time, for backfills and tests) supply it.
"""

from __future__ import annotations

import itertools
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec
import orjson
import redis

from tierflow.pipeline import lua
from tierflow.pipeline.config.domain import Config
from tierflow.pipeline.ingest.validate import ValidEvent
from tierflow.pipeline.state.summary import AsOfOutOfRange, RawState, UserKeys, iso, summarize, user_tag
from tierflow.pipeline.tiering.config import check_against
from tierflow.pipeline.tiering.evaluate import TRACKED, Evaluation, evaluate
from tierflow.pipeline.tiering.membership import PaidPurchase
from tierflow.pipeline.tiering.rfm import (
    DIMENSIONS,
    SCORES,
    SEGMENT_IDS,
    Population,
    cuts_from_ranked,
    quantile_ranks,
)
from tierflow.schemas.events import Purchase
from tierflow.schemas.tier_changes import REASONS, Reason, TierChange

SNAPSHOT_KEY = "tf:tier:pop"
# Re-evaluation rounds before giving up on a user whose state keeps moving under us.
MAX_ATTEMPTS = 8


def wall_clock() -> int:
    return int(time.time() * 1000)


class WatermarkClock:
    """Event time: the newest event time observed (never goes back)."""

    def __init__(self, start_ms: int = 0) -> None:
        self.now_ms = start_ms

    def observe(self, ts_ms: int) -> None:
        self.now_ms = max(self.now_ms, ts_ms)

    def __call__(self) -> int:
        return self.now_ms


class ConcurrentEvaluation(RuntimeError):
    """A user's state kept changing between read and commit."""


@dataclass(frozen=True, slots=True)
class TierKeys:
    tier: str
    outbox: str
    pending: str
    paid: str

    @classmethod
    def of(cls, user_id: str) -> TierKeys:
        tag = user_tag(user_id)
        return cls(f"{tag}:tier", f"{tag}:outbox", f"{tag}:pend", f"{tag}:paid")


@dataclass(frozen=True, slots=True)
class ShardKeys:
    counts: str
    applied: str
    due: str
    outbox: str
    score_sets: tuple[str, ...]  # r1..r5, f1..f5, m1..m5
    raw: tuple[str, ...]  # r, f, m

    @classmethod
    def of(cls, shard: int) -> ShardKeys:
        tag = "{tf:t:" + str(shard) + "}"
        return cls(
            f"{tag}:counts", f"{tag}:applied", f"{tag}:due", f"{tag}:outbox",
            tuple(f"{tag}:s:{dim}:{s}" for dim in DIMENSIONS for s in SCORES),
            tuple(f"{tag}:raw:{dim}" for dim in DIMENSIONS),
        )

    def as_list(self) -> list[str]:
        return [self.counts, self.applied, self.due, self.outbox, *self.score_sets, *self.raw]

    def score_set(self, dim: str, score: int) -> str:
        return self.score_sets[DIMENSIONS.index(dim) * len(SCORES) + score - 1]


def shard_of(user_id: str, shards: int) -> int:
    return zlib.crc32(user_id.encode()) % shards


def basis_of(profile: Mapping[str, str]) -> int:
    """Events applied to the user (apply.lua's counters); tiers.lua counts the same way."""
    return sum(int(profile.get(f, "0")) for f in ("nb", "nc", "ni", "pc"))


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
    # Every unacknowledged change of the evaluated users with changes, oldest first:
    # publish these, then `ack_changes`. Includes records a crashed run left unpublished.
    outbox: dict[str, list[TierChange]] = field(default_factory=dict)

    def merge(self, other: Result) -> None:
        self.evaluated += other.evaluated
        self.appended += other.appended
        self.outbox.update(other.outbox)


@dataclass(frozen=True)
class PopulationShift:
    """A new snapshot and which users it may move."""

    snapshot_id: str
    population: Population
    flips: dict[str, list[int]]  # dim -> scores whose high/low flipped
    ranges: dict[str, list[list[int | None]]]  # dim -> raw [lo, hi) ranges whose quantile moved


@dataclass
class TickResult:
    decayed: Result = field(default_factory=Result)
    shift: PopulationShift | None = None
    swept: Result = field(default_factory=Result)


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class TierStore:
    def __init__(self, client: redis.Redis, config: Config) -> None:
        check_against(config.state.windows_days, config.tiering)
        self.client = client
        self.config = config
        self.tiering = config.tiering
        self.shards = [ShardKeys.of(n) for n in range(self.tiering.population.shards)]
        self._script = lua.register(client, __file__, "tiers")
        self._claim = lua.register(client, __file__, "tier_claim")

    # --- evaluation ---------------------------------------------------------------------------

    def on_batch(self, events: Sequence[ValidEvent], now_ms: int) -> Result:
        """Ingest hook, after the batch's events are applied to the state (and before
        the offsets are committed): re-evaluate every user in it (reason event),
        recording their paid-membership orders. Safe to call again for a replayed
        batch. Publish `Result.outbox`, then `ack_changes`."""
        event_times: dict[str, int] = {}
        for item in events:
            user = item.event.user_id
            event_times[user] = max(event_times.get(user, item.ts_ms), item.ts_ms)
        paid = membership_orders(events, self.tiering.membership.paid.sku)
        return self.evaluate_users(event_times, now_ms, "event", event_times=event_times, paid=paid)

    def evaluate_users(
        self,
        user_ids: Iterable[str],
        now_ms: int,
        reason: Reason,
        *,
        event_times: Mapping[str, int] | None = None,
        paid: Mapping[str, list[list[object]]] | None = None,
    ) -> Result:
        """Evaluate users as of now_ms (or their stored instant, if later), commit
        the changes and apply the population deltas. Users without state are skipped."""
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        result = Result()
        deltas: list[str] = []
        todo = list(dict.fromkeys(user_ids))
        for _ in range(MAX_ATTEMPTS):
            if not todo:
                break
            todo = self._round(todo, now_ms, reason, event_times or {}, paid or {}, result, deltas)
        if todo:
            raise ConcurrentEvaluation(f"state kept moving for {len(todo)} users, e.g. {todo[0]!r}")
        self._flush(deltas)
        return result

    def _round(
        self,
        users: list[str],
        now_ms: int,
        reason: Reason,
        event_times: Mapping[str, int],
        paid: Mapping[str, list[list[object]]],
        result: Result,
        deltas: list[str],
    ) -> list[str]:
        loaded, snapshot = self._load(users, paid)
        pipe = self.client.pipeline(transaction=False)
        evaluated: list[tuple[str, Evaluation]] = []
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
            self._commit(pipe, user, state, evaluation, snapshot.taken_ms, reason, event_time)
            evaluated.append((user, evaluation))
        retry: list[str] = []
        for (user, evaluation), (status, appended, pending, outbox) in zip(
            evaluated, pipe.execute(), strict=True
        ):
            if status == "stale":
                retry.append(user)
                continue
            result.evaluated += 1
            result.evaluations[user] = evaluation
            deltas += pending
            records = [msgspec.json.decode(r, type=TierChange) for r in outbox]
            if appended:
                result.appended += records[-appended:]
            if records:
                result.outbox[user] = records
        return retry

    def _load(
        self, users: list[str], paid: Mapping[str, list[list[object]]]
    ) -> tuple[dict[str, Loaded], Snapshot]:
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            keys = UserKeys.of(user)
            tier = TierKeys.of(user)
            self._script(
                keys=[keys.profile, keys.days, keys.categories, keys.skus, keys.channels,
                      tier.tier, tier.paid],
                args=["load", orjson.dumps(paid.get(user, []))],
                client=pipe,
            )
        pipe.hgetall(SNAPSHOT_KEY)
        *rows, snapshot = pipe.execute()
        out: dict[str, Loaded] = {}
        for user, row in zip(users, rows, strict=True):
            profile, days, cats, skus, chans, tier, paid_orders = (_pairs(r) for r in row)
            if not profile:
                continue
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
        if reason == "event" and "ls" in state.raw.profile:
            return int(state.raw.profile["ls"])
        if reason == "time_decay" and state.tier["nb"]:
            return min(int(state.tier["nb"]), evaluation.as_of_ms)
        return evaluation.as_of_ms

    def _commit(
        self, pipe: redis.client.Pipeline, user: str, state: Loaded, e: Evaluation,
        snapshot_ms: int, reason: Reason, event_time_ms: int,
    ) -> None:
        keys = TierKeys.of(user)
        scores = {"r": e.scores.r, "f": e.scores.f, "m": e.scores.m} if e.scores else None
        raw = (
            {dim: str(e.raw.of(dim)) for dim in DIMENSIONS} if e.raw is not None else None
        )
        self._script(
            keys=[keys.tier, keys.outbox, keys.pending, UserKeys.of(user).profile],
            args=[
                "commit", user, basis_of(state.raw.profile), e.as_of_ms, reason, iso(event_time_ms),
                orjson.dumps(e.values()), orjson.dumps(scores), orjson.dumps(raw),
                "" if e.next_boundary_ms is None else str(e.next_boundary_ms),
                msgspec.json.encode(e),
                orjson.dumps({"points": e.membership.points, "repurchases": e.lifecycle.repurchases}),
                snapshot_ms,
            ],
            client=pipe,
        )

    def _flush(self, deltas: list[str]) -> None:
        """Apply pending deltas to the population (once each), then clear them."""
        by_shard: dict[int, dict[tuple[str, int], dict]] = defaultdict(dict)
        for text in deltas:
            delta = orjson.loads(text)
            shard = shard_of(delta["user"], len(self.shards))
            by_shard[shard][(delta["user"], delta["seq"])] = delta
        if not by_shard:
            return
        pipe = self.client.pipeline(transaction=False)
        for shard, items in by_shard.items():
            ordered = [items[k] for k in sorted(items)]
            self._script(keys=self.shards[shard].as_list(), args=["apply", orjson.dumps(ordered)],
                         client=pipe)
        applied: dict[str, int] = {}
        for flat in pipe.execute():
            for user, seq in _pairs(flat).items():
                applied[user] = int(seq)
        pipe = self.client.pipeline(transaction=False)
        for user, seq in applied.items():
            self._script(keys=[TierKeys.of(user).pending], args=["clear", seq], client=pipe)
        pipe.execute()

    def preview(self, user_id: str, as_of_ms: int) -> Evaluation | None:
        """Evaluate as of any instant without committing (e.g. `tierflow user --as-of`).
        Raises pipeline.state.AsOfOutOfRange past the retained history."""
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

    # --- outbox -------------------------------------------------------------------------------

    def pending_changes(self, user_ids: Iterable[str]) -> dict[str, list[TierChange]]:
        """Unacknowledged change records per user, oldest first (users with none left out)."""
        users = list(user_ids)
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            pipe.lrange(TierKeys.of(user).outbox, 0, -1)
        out: dict[str, list[TierChange]] = {}
        for user, rows in zip(users, pipe.execute(), strict=True):
            if rows:
                out[user] = [msgspec.json.decode(r, type=TierChange) for r in rows]
        return out

    def claim_changes(self, upto: Mapping[str, int], stamp_ms: int) -> list[int]:
        """Claim each user's records up to a seq for publication, stamping the time (for
        crash recovery). Returns, per user in order, the seq claimed before this call:
        only records above it are this caller's to send."""
        pipe = self.client.pipeline(transaction=False)
        for user, seq in upto.items():
            self._claim(keys=[TierKeys.of(user).tier], args=[seq, stamp_ms], client=pipe)
        return [int(previous) for previous in pipe.execute()]

    def ack_changes(self, published: Mapping[str, int]) -> int:
        """Drop each user's records up to the given seq (published and flushed).
        Idempotent. Returns how many records were dropped."""
        if not published:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for user, seq in published.items():
            self._script(keys=[TierKeys.of(user).outbox], args=["ack", seq], client=pipe)
        dropped = sum(pipe.execute())
        pipe = self.client.pipeline(transaction=False)
        for user, seq in published.items():
            shard = self.shards[shard_of(user, len(self.shards))]
            self._script(keys=[shard.outbox], args=["unlist", user, seq], client=pipe)
        pipe.execute()
        return dropped

    def outbox_users(self, limit: int) -> list[str]:
        """Users that may hold unpublished changes (e.g. after a crash), up to limit."""
        pipe = self.client.pipeline(transaction=False)
        for shard in self.shards:
            pipe.zrange(shard.outbox, 0, limit - 1)
        users = [u for rows in pipe.execute() for u in rows]
        return users[:limit]

    # --- time decay ---------------------------------------------------------------------------

    def due(self, now_ms: int, limit: int) -> list[tuple[str, int]]:
        """Users whose next boundary is at or before now_ms, earliest first."""
        pipe = self.client.pipeline(transaction=False)
        for shard in self.shards:
            pipe.zrangebyscore(shard.due, "-inf", now_ms, start=0, num=limit, withscores=True)
        rows = [(u, int(s)) for shard_rows in pipe.execute() for u, s in shard_rows]
        return sorted(rows, key=lambda r: (r[1], r[0]))[:limit]

    def tick(self, now_ms: int, cadence_ms: int | None = None) -> TickResult:
        """The timer: re-evaluate due users (time_decay); snapshot the population when
        the interval passed and sweep the users it moves (means_shift)."""
        result = TickResult()
        due = self.due(now_ms, self.tiering.decay.due_batch)
        if due:
            result.decayed = self.evaluate_users(
                [u for u, _ in due], now_ms, "time_decay", event_times=dict(due)
            )
            # A user whose state is gone (erased) must not stay due forever.
            gone = [u for u, _ in due if u not in result.decayed.evaluations]
            if gone:
                pipe = self.client.pipeline(transaction=False)
                for user in gone:
                    if not self.client.exists(UserKeys.of(user).profile):
                        pipe.zrem(self.shards[shard_of(user, len(self.shards))].due, user)
                pipe.execute()
        # The snapshot cadence may run on another clock than evaluations: on event time a
        # backfill's clock stands still between events while the population moves on.
        cadence = now_ms if cadence_ms is None else cadence_ms
        taken = self.client.hget(SNAPSHOT_KEY, "cadence_ms")
        if taken is None or int(taken) + self.tiering.population.snapshot_interval_ms <= cadence:
            result.shift = self.snapshot_means(now_ms, cadence)
        result.swept = self.sweep(now_ms)
        return result

    # --- population ---------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Exact population counts summed over shards."""
        pipe = self.client.pipeline(transaction=False)
        for shard in self.shards:
            pipe.hgetall(shard.counts)
        total: dict[str, int] = defaultdict(int)
        for row in pipe.execute():
            for name, value in row.items():
                total[name] += int(value)
        return dict(total)

    def population(self) -> Population:
        """The snapshot evaluations score against."""
        return Snapshot.of(self.client.hgetall(SNAPSHOT_KEY)).population

    def snapshot_means(self, now_ms: int, cadence_ms: int | None = None) -> PopulationShift:
        """Take a snapshot of the means (and quantile cut points) and record which
        users it moves as the snapshot's pending sweep (merged with any unfinished one)."""
        counts = self.counts()
        score_counts = {dim: [counts.get(f"{dim}:{s}", 0) for s in SCORES] for dim in DIMENSIONS}
        modes = {"r": self.tiering.recency.mode, "f": self.tiering.frequency.mode,
                 "m": self.tiering.monetary.mode}
        cuts = {dim: c for dim in DIMENSIONS if modes[dim] == "quantiles"
                if (c := self._quantile_cuts(dim)) is not None}
        new = Population(counts=score_counts, cuts=cuts)
        stored = self.client.hgetall(SNAPSHOT_KEY)
        old = Snapshot.of(stored).population
        flips = {dim: [s for s in SCORES if old.high(dim, s) != new.high(dim, s)] for dim in DIMENSIONS}
        ranges: dict[str, list[list[int | None]]] = {}
        for dim in DIMENSIONS:
            before, after = old.cuts.get(dim), new.cuts.get(dim)
            if before == after:
                continue
            # From or to the threshold table every scored user may move.
            ranges[dim] = [[None, None]] if before is None or after is None else [
                [min(a, b), max(a, b)] for a, b in zip(before, after, strict=True) if a != b
            ]
        pending = orjson.loads(stored.get("sweep", '{"flips": {}, "ranges": {}}'))
        for dim, scores in flips.items():
            merged = sorted(set(pending["flips"].get(dim, [])) | set(scores))
            if merged:
                pending["flips"][dim] = merged
        for dim, spans in ranges.items():
            pending["ranges"][dim] = pending["ranges"].get(dim, []) + spans
        snapshot_id = uuid.uuid4().hex
        self.client.hset(SNAPSHOT_KEY, mapping={
            "id": snapshot_id,
            # Commits refuse evaluations made against an older snapshot than the user's last.
            "taken_ms": max(now_ms, Snapshot.of(stored).taken_ms + 1),
            "cadence_ms": now_ms if cadence_ms is None else cadence_ms,
            "population": msgspec.json.encode(new),
            "sweep": orjson.dumps(pending),
        })
        return PopulationShift(snapshot_id, new, pending["flips"], pending["ranges"])

    def sweep(self, now_ms: int, reason: Reason = "means_shift") -> Result:
        """Re-evaluate the users the snapshot's pending sweep names, then mark it done.
        Users are streamed in chunks of `decay.due_batch`; one in several sets is
        simply evaluated twice (the second finds nothing to change)."""
        snapshot = self.client.hgetall(SNAPSHOT_KEY)
        if "sweep" not in snapshot:
            return Result()
        pending = orjson.loads(snapshot["sweep"])
        groups: list[Iterable[str]] = [
            self.users_with_score(dim, s) for dim, scores in pending["flips"].items() for s in scores
        ]
        groups += [self.users_with_raw_between(dim, lo, hi)
                   for dim, spans in pending["ranges"].items() for lo, hi in spans]
        result = Result()
        for chunk in _chunks(itertools.chain.from_iterable(groups), self.tiering.decay.due_batch):
            result.merge(self.evaluate_users(chunk, now_ms, reason))
        self._script(keys=[SNAPSHOT_KEY], args=["sweep_done", snapshot["id"]])
        return result

    def reevaluate_all(self, user_ids: Iterable[str], now_ms: int) -> Result:
        """After a configuration change: re-score everyone (reason config_change),
        then re-snapshot the population and sweep the users it moves. The changes wait
        in the outboxes (`outbox_users`) for the worker to publish. Safe to re-run."""
        result = Result()
        for chunk in _chunks(user_ids, self.tiering.decay.due_batch):
            result.merge(self.evaluate_users(chunk, now_ms, "config_change"))
        self.snapshot_means(now_ms)
        result.merge(self.sweep(now_ms, "config_change"))
        return result

    def users_with_score(self, dim: str, score: int) -> Iterator[str]:
        """Users whose stored score on dim is `score` (exact per-score sets)."""
        for shard in self.shards:
            yield from self.client.sscan_iter(shard.score_set(dim, score), count=1000)

    def users_with_raw_between(self, dim: str, lo: int | None, hi: int | None) -> Iterator[str]:
        """Scored users whose raw value on dim lies in [lo, hi) (None: unbounded)."""
        low = "-inf" if lo is None else lo
        high = "+inf" if hi is None else f"({hi}"
        for shard in self.shards:
            yield from self.client.zrangebyscore(shard.raw[DIMENSIONS.index(dim)], low, high)

    def _quantile_cuts(self, dim: str) -> list[int] | None:
        """Quantile cut points over all shards, by order statistics: the k-th smallest
        raw value is found by binary search on value with ZCOUNT summed over shards."""
        keys = [shard.raw[DIMENSIONS.index(dim)] for shard in self.shards]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
            pipe.zrange(key, -1, -1, withscores=True)
        rows = pipe.execute()
        n = sum(rows[0::3])
        if n == 0:
            return None
        lowest = min(int(r[0][1]) for r in rows[1::3] if r)
        highest = max(int(r[0][1]) for r in rows[2::3] if r)

        def kth(rank: int) -> int:
            lo, hi = lowest, highest
            while lo < hi:
                mid = (lo + hi) // 2
                pipe = self.client.pipeline(transaction=False)
                for key in keys:
                    pipe.zcount(key, "-inf", mid)
                if sum(pipe.execute()) >= rank + 1:
                    hi = mid
                else:
                    lo = mid + 1
            return lo

        return cuts_from_ranked([kth(rank) for rank in quantile_ranks(n)])

    def report(self) -> dict[str, object]:
        """`tierflow segments --json`: counts per value of every dimension from the
        stored tiers (segment counts add up to scored_users), and the means in use."""
        counts = self.counts()
        population = self.population()

        def values(dim: str, names: Iterable[str]) -> dict[str, int]:
            known = {name: counts.get(f"{dim}:{name}", 0) for name in names}
            # Values from an earlier configuration (e.g. a renamed tier) still show.
            for key, n in counts.items():
                if key.startswith(f"{dim}:") and n:
                    known.setdefault(key.split(":", 1)[1], n)
            return known

        return {
            "scored_users": sum(counts.get(f"r:{s}", 0) for s in SCORES),
            "users": counts.get("users", 0),
            "means": {dim: population.mean(dim) for dim in DIMENSIONS},
            "segments": values("segment", SEGMENT_IDS),
            "lifecycle": values("lifecycle", ("new", "first_purchase", "repeat", "vip")),
            "membership": values("membership", self.tiering.tier_names),
            "aipl": values("aipl", ("aware", "interest", "purchase", "loyalty")),
        }


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True)
class Snapshot:
    population: Population
    # When it was taken (the clock's time); -1 before the first snapshot.
    taken_ms: int

    @classmethod
    def of(cls, stored: Mapping[str, str]) -> Snapshot:
        doc = stored.get("population")
        population = Population() if doc is None else msgspec.json.decode(doc, type=Population)
        return cls(population, int(stored.get("taken_ms", "-1")))
