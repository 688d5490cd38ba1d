"""Exactly once on the output topics: every lane has one publisher at a time.

Tier changes and reward records wait in their user's Redis outbox until they are
on `tier.changes` / `reward.grants`, in partition `lane`: the user's lane
(pipeline/lanes.py). The worker whose ingest consumer holds partition `lane` of the
first input topic owns the lane, and its publisher thread alone publishes it,
woken whenever a stage or the timer notes the users it wrote outboxes for
(`Written`). The stages only write outboxes, so the ingest thread goes on with
the next batch while the last one's records are published: the input offsets
never wait for the output topics (the outboxes in Redis are what makes the
records durable). The consumer's rebalance listeners take the same lock as a
publishing round, so a lane changes hands between rounds, never within one. A
round that fails stops the thread, and the ingest loop raises that failure on
its next batch (the supervisor then starts both again). The range assignor
gives a worker the same partition of every input topic, so the owner of a lane
also reads most of its users' events.

Each lane has a transactional producer with a transactional.id of its own. One
round sends the records of a page of the lane's users in one transaction, then
trims their outboxes and moves the lane's mark past them. A commit costs tens of
milliseconds whatever it carries, so the lanes commit side by side, and the owner
publishes at most every `worker.publish_interval_ms`: records written meanwhile
(by several ingest batches, the timer) wait in their outboxes and share one
transaction per lane. Why nothing is sent
twice or lost:

- A record leaves its outbox only after the transaction that carried it has
  committed, so a crash or a failed commit loses nothing.
- Fencing: a new owner's `init_transactions` aborts whatever the lane's previous
  producer left open, and no producer of the lane with an older epoch can commit
  after that. A worker that lost the lane without knowing it (hung, cut off from
  the group) cannot add anything.
- Read-back: the new owner then reads the lane's partitions (read_committed) from
  the mark to the end. It acknowledges every record it finds there before it sends
  anything, so a commit followed by a crash before the trim is not sent again.
  The mark only ever moves past acknowledged records, so nothing older can be waiting.

Tier-triggered rewards follow the same path: every change committed is handed to
`on_published` (the reward rules) before it leaves its outbox, by the round that
sent it or by the read-back that found it, and the grants it makes wait in the
same user's outbox, in the same lane. (Not a consumer of `tier.changes`: offsets
there have a gap after every transaction, which Faust's commits do not step over,
faust-streaming issue #606.)

Readers must use isolation.level=read_committed (librdkafka's default; Java's
is read_uncommitted), or they also see aborted copies. An aborted record is always
committed later with the same content.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from tierflow.agents.ingest import AppliedBatch
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.errors import ConfigError
from tierflow.pipeline.kafka import clients
from tierflow.pipeline.kafka.errors import DeliveryError
from tierflow.pipeline.kafka.publisher import Delivery
from tierflow.pipeline.kafka.topics import admin
from tierflow.pipeline.lanes import Lanes
from tierflow.pipeline.lua import Redis
from tierflow.pipeline.outboxes import Outboxes, Read
from tierflow.pipeline.rewards.engine import RewardEngine
from tierflow.pipeline.rewards.outbox import OutboxBatch
from tierflow.pipeline.tiering.keys import Shards
from tierflow.pipeline.tiering.outbox import ChangeOutbox
from tierflow.schemas.tier_changes import TierChange

log = logging.getLogger("tierflow.outputs")

_encode = msgspec.json.Encoder().encode

# How long one poll of a read-back waits; the whole read-back is bounded by the delivery timeout.
_POLL_S = 1.0


class _RecordId(msgspec.Struct):
    user_id: str
    record_id: str


# The reward rules for changes now on tier.changes; returns the users given records.
OnPublished = Callable[[list[TierChange]], Iterable[str]]


class Written:
    """Users given output records since the publisher last looked: added to by the
    stages and the timer, from any thread; taken by the publisher, whom `ready` wakes."""

    def __init__(self) -> None:
        self._users: set[str] = set()
        self._lock = threading.Lock()
        self.ready = threading.Event()

    def add(self, users: Iterable[str]) -> None:
        with self._lock:
            before = len(self._users)
            self._users.update(users)
            grew = len(self._users) > before
        if grew:
            self.ready.set()

    def take(self) -> list[str]:
        with self._lock:
            users, self._users = list(self._users), set()
        return users


class KnownLanes(Lanes):
    """Lanes with the users' lanes remembered in this process: a lane is written once
    and never changed while workers run (erasure and rebuild stop them first), so each
    user costs one Redis reply per process instead of one per batch and per round.
    Forgets everything past `limit` users, which bounds the memory."""

    def __init__(self, client: Redis, count: int, limit: int) -> None:
        super().__init__(client, count)
        self.limit = limit
        self._known: dict[str, int] = {}

    def _remember(self, lanes: Mapping[str, int]) -> None:
        if len(self._known) + len(lanes) > self.limit:
            self._known = {}
        self._known.update(lanes)

    def assign(self, first_partition: Mapping[str, int]) -> None:
        new = {user: partition % self.count for user, partition in first_partition.items()
               if user not in self._known}
        if not new:
            return
        pipe = self.client.pipeline(transaction=False)
        for user, lane in new.items():
            # NX and GET together: the lane already held, or None when this one was set.
            pipe.set(self.key(user), lane, nx=True, get=True)
        held = pipe.execute()
        self._remember({user: lane if old is None else int(old)
                        for (user, lane), old in zip(new.items(), held, strict=True)})

    def of(self, users: Collection[str]) -> dict[str, int]:
        known = self._known
        missing = [user for user in users if user not in known]
        fetched = super().of(missing) if missing else {}
        self._remember(fetched)
        return {user: fetched[user] if user in fetched else known[user] for user in users}


class Recent:
    """What this publisher handled since the last sweep and the one before: users pointed
    at or published here (the sweep leaves them alone: they are being handled), and the
    seq each user's change outbox was emptied at (an index entry at or below it is stale)."""

    def __init__(self) -> None:
        self._now: tuple[set[str], dict[str, int]] = (set(), {})
        self._before: tuple[set[str], dict[str, int]] = (set(), {})

    def handled(self, users: Iterable[str]) -> None:
        self._now[0].update(users)

    def emptied(self, seqs: Mapping[str, int]) -> None:
        self._now[1].update(seqs)

    def is_handled(self, user: str) -> bool:
        return user in self._now[0] or user in self._before[0]

    def emptied_at(self, user: str) -> int:
        return max(self._now[1].get(user, -1), self._before[1].get(user, -1))

    def turn(self) -> None:
        """At each sweep: the oldest generation goes."""
        self._now, self._before = (set(), {}), self._now


class LaneProducer:
    """The transactional producer of one lane in this process."""

    def __init__(self, ctx: Context, lane: int) -> None:
        settings = ctx.settings
        self.lane = lane
        self.timeout_s = ctx.config.worker.delivery_timeout_s
        self.transactional_id = f"{settings.group_id}/{settings.topics.prefix}lane-{lane}"
        self._producer = clients.producer(settings.kafka, transactional_id=self.transactional_id)
        self._delivery: Delivery | None = None

    def fence(self) -> None:
        """Abort what earlier producers of the lane left open; they can commit nothing more."""
        self._producer.init_transactions(self.timeout_s)

    def begin(self, records: Iterable[tuple[str, str, bytes]]) -> None:
        """Send (topic, user, value) records to the lane's partitions in a new transaction."""
        self._producer.begin_transaction()
        self._delivery = Delivery(self._producer, self.timeout_s)
        for topic, user, value in records:
            self._delivery.send(topic, user.encode(), value, partition=self.lane)

    def commit(self) -> dict[str, int]:
        """Commit the open transaction; per topic, the offset after its last record."""
        assert self._delivery is not None
        self._producer.commit_transaction(self.timeout_s)
        delivery, self._delivery = self._delivery, None
        delivery.wait()  # raises DeliveryError if any record was refused
        return {topic: end for (topic, _partition), end in delivery.ends.items()}

    def abort(self) -> None:
        """Best effort: the next owner's fence aborts what this leaves open."""
        if self._delivery is not None:
            self._delivery = None
            try:
                self._producer.abort_transaction(self.timeout_s)
            except KafkaException as exc:
                log.warning("lane %d: abort failed (%s); the next owner aborts it", self.lane, exc)

    def close(self) -> None:
        self.abort()
        self._producer.close()


def last_seqs(changes: Iterable[TierChange]) -> dict[str, int]:
    """Per user, the highest seq among these changes."""
    last: dict[str, int] = {}
    for change in changes:
        last[change.user_id] = max(last.get(change.user_id, 0), change.seq)
    return last


class Outputs:
    """Publishes the outboxes of the lanes this worker owns, on its own thread. The last
    stage of every ingest batch (it gives new users their lane), and the ingest
    consumer's rebalance listener."""

    def __init__(self, ctx: Context, client: Redis, written: Written, on_published: OnPublished) -> None:
        self.ctx = ctx
        self.client = client
        self.written = written
        self.on_published = on_published
        self.worker = ctx.config.worker
        topics = ctx.settings.topics
        self.lane_topic = topics.inputs[0]
        self.tier_topic, self.grant_topic = topics.tier_changes, topics.reward_grants
        self.changes = ChangeOutbox(client, Shards.of(ctx.config.tiering.population.shards))
        self.engine = RewardEngine(client, ctx.config.rewards)
        self.outboxes = Outboxes(client, self.changes, self.engine.ledger)
        self.lanes: KnownLanes | None = None
        self.producers: dict[int, LaneProducer] = {}  # the lanes owned
        self.parked: dict[int, LaneProducer] = {}  # revoked, kept in case they come straight back
        self._tier_cursors = [0] * len(self.changes.shards.all)
        self._grant_cursor = 0
        self._next_sweep = 0.0
        self._recent = Recent()
        self._next_publish = 0.0
        # Commits wait on the broker with the GIL released: one thread per lane overlaps them.
        self._committers = ThreadPoolExecutor(thread_name_prefix="lane-commit")
        # Held by a publishing round and by the rebalance listeners: the lanes owned
        # change between rounds. Reentrant: a listener may run a read-back's grants.
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: Exception | None = None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # A round under way gets what a stopping worker gives its stages; an unfinished
            # one leaves its records in their outboxes for the lane's next owner.
            self._thread.join(self.worker.stop_timeout_s)
            self._thread = None
        if not self._lock.acquire(timeout=self.worker.stop_timeout_s):
            log.warning("a publishing round is still under way; the lanes' next owners fence its producers")
            return
        try:
            for producer in [*self.producers.values(), *self.parked.values()]:
                producer.close()
            self.producers, self.parked = {}, {}
        finally:
            self._lock.release()

    # --- the ingest thread ------------------------------------------------------------

    def start(self) -> None:
        """Before each ingest run: forget the producers of the last run (a failed round
        may have left records committed and not acknowledged: the next owner of each
        lane reads them back) and check that every lane has an output partition."""
        self.close()
        metadata = admin(self.ctx.settings).list_topics(timeout=self.worker.delivery_timeout_s).topics
        if self.lane_topic not in metadata:
            raise ConfigError(f"topic {self.lane_topic} does not exist")
        count = len(metadata[self.lane_topic].partitions)
        for topic in (self.tier_topic, self.grant_topic):
            have = len(metadata[topic].partitions) if topic in metadata else 0
            if have < count:
                raise ConfigError(f"{topic} has {have} partitions, fewer than {self.lane_topic}'s {count}: "
                                  "each input partition is a lane of the output topics; add partitions")
        self.lanes = KnownLanes(self.client, count, self.worker.lane_cache_users)

    def publish_in_background(self) -> None:
        """After `start`: the publisher thread (the worker's; tests run `cycle` by hand)."""
        self._stop, self._failure = threading.Event(), None
        self._next_publish = 0.0
        self._thread = threading.Thread(target=self._publish_loop, args=(self._stop,),
                                        name="tierflow-publish", daemon=True)
        self._thread.start()

    def run(self, batch: AppliedBatch) -> None:
        """Give the batch's new users their lane (before anything routes them), and
        raise what stopped the publisher thread."""
        assert self.lanes is not None
        self.idle()
        self.lanes.assign(batch.partitions)

    def idle(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _publish_loop(self, stop: threading.Event) -> None:
        """A cycle at most every publish_interval_ms once something was written, and at
        least every outbox_sweep_ms (the sweep): what the batches between wrote waits in
        the outboxes (nothing is lost) and goes out in the same transactions."""
        ready = self.written.ready
        while not stop.is_set():
            ready.wait(self.worker.outbox_sweep_ms / 1000)
            wait_s = self._next_publish - time.monotonic()
            if (wait_s > 0 and stop.wait(wait_s)) or stop.is_set():
                return
            self._next_publish = time.monotonic() + self.worker.publish_interval_ms / 1000
            ready.clear()  # before the take: a write after it wakes the next round
            try:
                self.cycle()
            except Exception as exc:
                self._failure = exc
                log.warning("publishing stopped; the ingest loop restarts it (%s: %s)", type(exc).__name__, exc)
                return

    def cycle(self) -> None:
        """Point lane owners at what was written since the last cycle (and, now and then,
        at a page of everything waiting), then publish the lanes owned here."""
        with self._lock:
            self._cycle()

    def _cycle(self) -> None:
        assert self.lanes is not None
        users = self.written.take()
        self._recent.handled(users)
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + self.worker.outbox_sweep_ms / 1000
            users += self._sweep()
        if users:
            self.lanes.route(users)
        if self.producers:
            self._drain()

    def _sweep(self) -> list[str]:
        """One step of the walks over the outbox indexes, which find records nobody pointed
        at (a writer that died, a lane that changed hands): about `outbox_batch` users in
        all. Returns those with records waiting, unless handled here since the last sweep."""
        recent, budget = self._recent, self.worker.outbox_batch
        listed = self.changes.scan(self._tier_cursors, max(1, budget // len(self._tier_cursors)))
        stale = {user: seq for user, seq in listed.items() if recent.emptied_at(user) >= seq}
        self.changes.unlist(stale)
        found = list(self.changes.tidy([user for user in listed if user not in stale and not recent.is_handled(user)]))
        self._grant_cursor, swept = self.engine.scan_outbox(self._grant_cursor, budget)
        found += self.engine.tidy_outbox([user for user in swept if not recent.is_handled(user)][:budget])
        recent.turn()
        return found

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            self._on_assign(consumer, partitions)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lanes = sorted({tp.partition for tp in partitions if tp.topic == self.lane_topic})
        for lane in lanes:
            producer = self.parked.pop(lane, None)
            # Parked since the revocation that opened this rebalance: no one else held it since.
            self.producers[lane] = producer if producer is not None else self._take_over(lane)
        for producer in self.parked.values():
            producer.close()
        self.parked = {}
        # Walk every waiting record from the start: an earlier owner may have died mid-round.
        self._tier_cursors = [0] * len(self._tier_cursors)
        self._grant_cursor, self._next_sweep = 0, 0.0
        self._recent = Recent()
        log.info("publishing output lanes %s", lanes)

    def on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            for tp in partitions:
                producer = self.producers.pop(tp.partition, None) if tp.topic == self.lane_topic else None
                if producer is not None:
                    self.parked[tp.partition] = producer

    def on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Others may hold these lanes already: this process's producers must go."""
        with self._lock:
            for tp in partitions:
                producer = self.producers.pop(tp.partition, None) if tp.topic == self.lane_topic else None
                if producer is not None:
                    producer.close()

    # --- taking a lane over -------------------------------------------------------------

    def _take_over(self, lane: int) -> LaneProducer:
        producer = LaneProducer(self.ctx, lane)
        try:
            producer.fence()
            found = self._read_back(lane)
        except Exception:
            producer.close()
            raise
        if found:
            log.info("lane %d: %d records were already published; acknowledged", lane, found)
        return producer

    def _read_back(self, lane: int) -> int:
        """Finish what an earlier owner committed and did not acknowledge: the records on
        the lane's partitions from its mark to the end. Their changes' rewards are granted,
        then all of them acknowledged. Returns how many records were found."""
        assert self.lanes is not None
        marks = self.lanes.marks(lane)
        changes: list[TierChange] = []
        granted: dict[str, set[str]] = defaultdict(set)
        ends: dict[str, int] = {}
        consumer = clients.consumer(self.ctx.settings.kafka, f"{self.ctx.settings.group_id}-readback", **{
            "isolation.level": "read_committed", "enable.partition.eof": True, "auto.offset.reset": "earliest"})
        try:
            consumer.assign([TopicPartition(topic, lane, marks.get(topic, OFFSET_BEGINNING))
                             for topic in (self.tier_topic, self.grant_topic)])
            deadline = time.monotonic() + self.worker.delivery_timeout_s
            while len(ends) < 2:
                msg = consumer.poll(_POLL_S)
                if msg is not None and msg.error() is None:
                    self._seen(msg, changes, granted)
                elif msg is not None and msg.error().code() == KafkaError._PARTITION_EOF:
                    ends[msg.topic()] = msg.offset()
                elif time.monotonic() > deadline:
                    raise DeliveryError(f"lane {lane}: reading back the output topics timed out"
                                        + (f" ({msg.error()})" if msg is not None else ""))
        finally:
            consumer.close()
        if changes:
            self.lanes.route(self.on_published(changes))
        # Whatever is on the topic is published, whichever lane it was sent on.
        self.changes.ack(last_seqs(changes))
        stored = self.engine.outbox_of(list(granted))
        self.engine.ack(OutboxBatch.of({
            user: [raw for raw in rows if msgspec.json.decode(raw, type=_RecordId).record_id in granted[user]]
            for user, rows in stored.raw.items()}))
        self.lanes.advance(lane, ends)
        return len(changes) + sum(len(ids) for ids in granted.values())

    def _seen(self, msg: Message, changes: list[TierChange], granted: dict[str, set[str]]) -> None:
        try:
            if msg.topic() == self.tier_topic:
                changes.append(msgspec.json.decode(msg.value(), type=TierChange))
            else:
                record = msgspec.json.decode(msg.value(), type=_RecordId)
                granted[record.user_id].add(record.record_id)
        except msgspec.MsgspecError:
            log.warning("%s[%d]@%d is not a tierflow record; skipped", msg.topic(), msg.partition(), msg.offset())

    # --- publishing ------------------------------------------------------------------------

    def _drain(self) -> None:
        """Rounds of one transaction per owned lane with waiting users, until a round
        finds less than a page in every lane and granted nothing."""
        assert self.lanes is not None
        page = self.worker.outbox_batch
        while True:
            waiting = self.lanes.waiting(list(self.producers), page)
            if not waiting:
                return
            # The pointers go before the outboxes are read: a writer points again after it
            # wrote, so each record is either read below or pointed at anew.
            self.lanes.release(waiting)
            try:
                granted = self._round(waiting)
            except Exception:
                self.lanes.add(waiting)  # what this round did not finish
                raise
            if not granted and all(len(lane_users) < page for lane_users in waiting.values()):
                return

    def _round(self, waiting: Mapping[int, list[str]]) -> dict[int, list[str]]:
        """Publish, then acknowledge, the records of these users (pointed at in these
        lanes); point again at those with records left. Returns the users granted."""
        assert self.lanes is not None
        # Pointers are hints: a user's records go to the user's own lane, nowhere else.
        lane_of = self.lanes.of([user for users in waiting.values() for user in users])
        mine = {lane: [user for user in users if lane_of[user] == lane] for lane, users in waiting.items()}
        users = [user for lane_users in mine.values() for user in lane_users]
        read = self.outboxes.read(users)
        ends = self._publish(mine, read)
        # Granted before the changes leave their outboxes: a crash in between is finished
        # by the read-back. The grants are in these users' lanes, so they go out next.
        published = read.changes()
        granted = self.lanes.route(self.on_published(published)) if published else {}
        left = self.outboxes.ack(read, users)
        self._recent.handled(lane_of)
        self._recent.emptied({user: read.users[user].changes[-1].seq for user in users
                              if user not in left and user in read.users and read.users[user].changes})
        for lane, lane_ends in ends.items():
            self.lanes.advance(lane, lane_ends)
        strays = [user for lane, lane_users in waiting.items() for user in lane_users if lane_of[user] != lane]
        again: dict[int, list[str]] = defaultdict(list)
        for user in left.union(strays):
            again[lane_of[user]].append(user)
        self.lanes.add(again)
        return granted

    def _publish(self, by_lane: Mapping[int, list[str]], read: Read) -> dict[int, dict[str, int]]:
        """One transaction per lane; the sends of all lanes overlap, and so do the commits.
        If one fails, the lanes not committed are aborted and the round raises; what the
        others committed is acknowledged by the read-back of the next owner."""
        begun: list[LaneProducer] = []
        try:
            for lane, users in by_lane.items():
                waiting = [(user, read.users[user]) for user in users if user in read.users]
                records = [(self.tier_topic, user, _encode(change)) for user, outboxes in waiting
                           for change in outboxes.changes]
                records += [(self.grant_topic, user, raw.encode()) for user, outboxes in waiting
                            for raw in outboxes.rewards]
                if records:
                    self.producers[lane].begin(records)
                    begun.append(self.producers[lane])
            commits = [(producer, self._committers.submit(producer.commit)) for producer in begun]
            ends: dict[int, dict[str, int]] = {}
            failure: Exception | None = None
            for producer, commit in commits:
                try:
                    ends[producer.lane] = commit.result()
                    begun.remove(producer)
                except Exception as exc:
                    failure = failure or exc
            if failure is not None:
                raise failure
            return ends
        except Exception:
            for producer in begun:
                producer.abort()
            raise
