"""The ingest loop's batches on real Kafka and Redis: a batch is what has arrived, taken
as soon as there is something, so a record never waits for a batch window to pass."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import msgspec
import orjson
import pytest

from tierflow.agents.ingest import AppliedBatch, IngestLoop
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.kafka.publisher import Publisher
from tierflow.pipeline.kafka.topics import ensure_topics
from tierflow.pipeline.state.store import StateStore, connect

# Far longer than any record takes to arrive: the old window-filling batch would hold a
# lone record this long.
WINDOW_MS = 20_000
# How long the test waits for the loop to see a record: a fraction of the window.
SEEN_WITHIN_S = WINDOW_MS / 1000 / 3
# Joining the consumer group.
START_S = 30


class Recorder:
    """A stage that notes the users of every batch."""

    def __init__(self) -> None:
        self.users: set[str] = set()
        self.changed = threading.Condition()

    def run(self, batch: AppliedBatch) -> None:
        with self.changed:
            self.users |= batch.users
            self.changed.notify_all()

    def saw(self, users: set[str], timeout_s: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: users <= self.users, timeout_s)


@pytest.fixture
def running(settings: Settings) -> Iterator[tuple[Recorder, Publisher]]:
    ensure_topics(settings)
    config = load_config()
    config = msgspec.structs.replace(config, ingest=msgspec.structs.replace(config.ingest, batch_max_ms=WINDOW_MS))
    publisher = Publisher(settings.kafka, timeout_s=30)
    recorder = Recorder()
    loop = IngestLoop(Context(settings, config), StateStore(connect(settings.redis_url), 400), publisher,
                      stages=[recorder])
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    yield recorder, publisher
    stop.set()
    thread.join(WINDOW_MS / 1000 + 30)
    publisher.close()


def send(settings: Settings, publisher: Publisher, users: list[str]) -> None:
    delivery = publisher.delivery()
    for user in users:
        event = {"event_id": uuid.uuid4().hex, "type": "interaction", "user_id": user,
                 "ts": "2026-11-01T10:00:00Z", "channel": "app", "kind": "sign_in"}
        delivery.send(settings.topics.input("interaction"), user.encode(), orjson.dumps(event))
    delivery.wait()


def test_records_are_processed_without_waiting_out_the_batch_window(
    running: tuple[Recorder, Publisher], settings: Settings
) -> None:
    recorder, publisher = running
    send(settings, publisher, ["b-first"])
    # The loop is consuming once it has seen a record (joining the group, and a first fetch
    # that may be held up to batch_max_ms before the partitions' offsets are known).
    assert recorder.saw({"b-first"}, WINDOW_MS / 1000 + START_S), "the loop never consumed"
    send(settings, publisher, ["b-second", "b-third"])
    assert recorder.saw({"b-second", "b-third"}, SEEN_WITHIN_S), "the records waited for the batch window"
