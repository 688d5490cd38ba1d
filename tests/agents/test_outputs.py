"""The publisher of the output lanes against a real broker and Redis, in-process, so
that the dangerous moments happen on purpose: a publisher that dies between its
commit and its acknowledgement, one that lost its lane and keeps going, records
written where no publisher hears of them. Every record ends up on its topic once."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, TopicPartition

from tests.fixtures.worker import read_committed
from tierflow.agents.clock import Clock
from tierflow.agents.ingest import AppliedBatch
from tierflow.agents.outputs import KnownLanes, Outputs, Recent, Written
from tierflow.agents.rewards import RewardStage
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.ingest.validate import ValidEvent
from tierflow.pipeline.kafka.topics import ensure_topics
from tierflow.pipeline.lanes import Lanes
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.state.summary import encode
from tierflow.pipeline.tiering.store import TierStore
from tierflow.schemas.events import Item, Purchase
from tierflow.schemas.tier_changes import TierChange

# A first purchase moves a user's lifecycle to first_purchase, which this rule rewards.
RULE = """
[rewards.rules.first_buyer_points]
campaign = "first_purchase"
trigger = { on = "tier", dimension = "lifecycle", entered = "first_purchase" }
prize = "first_points"
"""


class Died(Exception):
    """The publisher's process ends here."""


class World:
    """One test's stores, and publishers made on demand, each like a worker."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.client = connect(self.ctx.settings.redis_url)
        self.tiers = TierStore(self.client, self.ctx.config)
        self.state = StateStore(self.client, self.ctx.config.state.retention_days)
        self.rewards = RewardStage(self.ctx, self.client, Clock("wall", self.client), lambda _users: None)
        self.lanes = Lanes(self.client, self.ctx.settings.partitions)

    def publisher(self, *lanes: int, die_after_commit: bool = False) -> Outputs:
        """A publisher that owns these lanes (taking them over: fence, read back)."""

        def on_published(changes: list[TierChange]) -> Iterable[str]:
            if die_after_commit:
                raise Died
            return self.rewards.on_published(changes)

        outputs = Outputs(self.ctx, self.client, Written(), on_published)
        outputs.start()
        outputs.on_assign(None, [TopicPartition(self.ctx.settings.topics.inputs[0], lane) for lane in lanes])
        return outputs

    def first_purchases(self, users: list[str], lane: int) -> None:
        """Each user buys once (tier changes in their outboxes), in this lane."""
        now = int(time.time() * 1000)
        self.lanes.assign({user: lane for user in users})
        events = [ValidEvent(Purchase(event_id=f"{u}-p", user_id=u, ts=now, channel="app", order_id=f"{u}-o",
                                      amount=50.0, currency="CNY",
                                      items=[Item(sku="SN001", category="snacks", qty=1, price=50.0)]), now)
                  for u in users]
        groups = {(e.event.user_id, "touch.purchase:0"): [encode(e.event, e.ts_ms, n)] for n, e in enumerate(events)}
        self.state.apply(groups)
        self.tiers.on_batch(events, now)

    def published(self) -> tuple[list[dict], list[dict]]:
        topics = self.ctx.settings.topics
        return ([v for _, _, v in read_committed(self.ctx.settings, topics.tier_changes)],
                [v for _, _, v in read_committed(self.ctx.settings, topics.reward_grants)])

    def partitions_of(self, topic: str) -> dict[str, set[int]]:
        out: dict[str, set[int]] = defaultdict(set)
        for partition, _, value in read_committed(self.ctx.settings, topic):
            out[value["user_id"]].add(partition)
        return out


def make_world(settings: Settings, tmp_path: Path, config: str = RULE) -> World:
    ensure_topics(settings)
    path = tmp_path / "tierflow.toml"
    path.write_text(config)
    return World(Context(settings, load_config(path)))


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> World:
    return make_world(settings, tmp_path)


def once(changes: list[dict], grants: list[dict]) -> None:
    """No change and no reward record twice."""
    assert [k for k, n in Counter((c["user_id"], c["dimension"], c["version"]) for c in changes).items() if n > 1] == []
    assert [k for k, n in Counter(g["record_id"] for g in grants).items() if n > 1] == []


def test_a_crash_between_commit_and_acknowledgement_sends_nothing_twice(world: World) -> None:
    users = [f"u{n}" for n in range(10)]
    world.first_purchases(users, lane=0)
    dying = world.publisher(0, die_after_commit=True)
    dying.written.add(users)
    with pytest.raises(Died):
        dying.cycle()
    committed, _ = world.published()
    assert {c["user_id"] for c in committed} == set(users)
    assert world.tiers.outbox.users(100)  # on the topic, not acknowledged

    heir = world.publisher(0)  # reads the lane back: acknowledges, and grants what the changes earned
    assert not world.tiers.outbox.users(100)
    heir.cycle()
    changes, grants = world.published()
    once(changes, grants)
    assert len(changes) == len(committed)
    assert {g["user_id"] for g in grants if g["rule"] == "first_buyer_points"} == set(users)
    assert world.rewards.engine.outbox(100).records == []


def test_a_publisher_that_lost_its_lane_publishes_nothing(world: World) -> None:
    old = world.publisher(0)
    new = world.publisher(0)  # the group gave lane 0 to another worker: the old producer is fenced
    users = [f"z{n}" for n in range(5)]
    world.first_purchases(users, lane=0)
    old.written.add(users)
    with pytest.raises(KafkaException):
        old.cycle()
    assert world.published() == ([], [])
    new.cycle()
    changes, grants = world.published()
    once(changes, grants)
    assert {c["user_id"] for c in changes} == set(users)
    assert {g["user_id"] for g in grants} == set(users)


def test_records_written_outside_a_worker_reach_their_lane_and_only_it(world: World) -> None:
    mine, theirs = world.publisher(0), world.publisher(1)
    world.lanes.assign({"cli-a": 0, "cli-b": 1})
    for user in ("cli-a", "cli-b"):  # as `tierflow` commands do: no publisher hears of them
        world.rewards.engine.adjust_points(user, 100, f"gift-{user}", int(time.time() * 1000), "test")
    mine.cycle()
    assert world.partitions_of(world.ctx.settings.topics.reward_grants) == {"cli-a": {0}}
    theirs.cycle()
    assert world.partitions_of(world.ctx.settings.topics.reward_grants) == {"cli-a": {0}, "cli-b": {1}}
    once(*world.published())


def published_users(world: World) -> set[str]:
    return {c["user_id"] for c in world.published()[0]}


def wait_for(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.05)


def test_batches_within_the_publish_interval_share_one_transaction_per_lane(settings: Settings,
                                                                           tmp_path: Path) -> None:
    world = make_world(settings, tmp_path, RULE + "[worker]\npublish_interval_ms = 600000\n")
    publisher = world.publisher(0)
    publisher.publish_in_background()

    def ingest_batch(users: list[str]) -> None:
        publisher.run(AppliedBatch([], len(users), int(time.time() * 1000), {user: 0 for user in users}))
        world.first_purchases(users, lane=0)
        publisher.written.add(users)

    try:
        ingest_batch(["a1", "a2"])  # the first write finds a round due: the publisher thread sends it
        wait_for(lambda: published_users(world) == {"a1", "a2"})
        ingest_batch(["b1"])
        ingest_batch(["c1", "c2"])
        # The next round is not due for the interval: they wait in their outboxes.
        assert set(world.tiers.outbox.users(100)) >= {"b1", "c1", "c2"}
        assert published_users(world) == {"a1", "a2"}
        publisher.cycle()
    finally:
        publisher.close()
    later = [(offset, value["user_id"]) for _, offset, value in read_committed(
        world.ctx.settings, world.ctx.settings.topics.tier_changes) if value["user_id"][0] in "bc"]
    assert {user for _, user in later} == {"b1", "c1", "c2"}
    # One transaction: consecutive offsets (each commit leaves a marker between transactions).
    offsets = sorted(offset for offset, _ in later)
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
    once(*world.published())


def test_the_ingest_loop_raises_what_stopped_the_publisher_thread(world: World) -> None:
    old = world.publisher(0)
    old.publish_in_background()
    world.publisher(0)  # the group gave lane 0 to another worker: the old producer is fenced
    users = [f"f{n}" for n in range(3)]
    world.first_purchases(users, lane=0)
    old.written.add(users)
    batch = AppliedBatch([], 0, int(time.time() * 1000), {})
    try:
        def raised() -> bool:
            try:
                old.run(batch)
            except KafkaException:
                return True
            return False

        wait_for(raised)
    finally:
        old.close()
    assert world.published() == ([], [])


def test_a_users_lane_is_the_partition_of_their_first_batch_and_is_remembered(world: World) -> None:
    lanes = KnownLanes(world.client, world.ctx.settings.partitions, limit=2)
    lanes.assign({"k1": 1, "k2": 0})
    lanes.assign({"k1": 0})  # a later batch on another partition moves nothing
    assert lanes.of(["k1", "k2"]) == {"k1": 1, "k2": 0}
    world.lanes.assign({"k3": 1})  # another worker placed k3
    assert lanes.of(["k3", "k1"]) == {"k3": 1, "k1": 1}  # past the limit it starts over, from Redis
    assert world.lanes.of(["k1", "k2", "k3"]) == {"k1": 1, "k2": 0, "k3": 1}


def test_the_sweep_passes_over_customers_handled_since_the_sweep_before_last_only() -> None:
    recent = Recent()
    recent.handled(["a"])
    recent.emptied({"a": 7})
    recent.turn()
    assert recent.is_handled("a") and recent.emptied_at("a") == 7  # handled since the sweep before
    recent.turn()
    assert not recent.is_handled("a") and recent.emptied_at("a") == -1  # the sweep checks it again
