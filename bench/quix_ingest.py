"""The Quix Streams contender of bench.ingest: the same work as tierflow.agents.ingest.IngestLoop.

Run by bench.ingest with an interpreter that has quixstreams installed (it pins
an older confluent-kafka than tierflow, hence its own virtualenv):

    python -m bench.quix_ingest SPEC_JSON

Per record: ingest.validate.parse_record, state.summary.encode, grouped per
(user, "topic:partition"), applied with state.store.StateStore. Two shapes:

  quix      a BatchingSink: Quix hands it each partition's records at every
            checkpoint (commit_every = the worker's batch_max_records), so it gets
            one pipelined Redis round trip per partition per checkpoint;
  quix-msg  StreamingDataFrame.update per message: one round trip per record.

Invalid records are counted, not dead-lettered: the benchmark data has none.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from quixstreams import Application, message_context
from quixstreams.sinks import BatchingSink, SinkBatch

from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.config.settings import Settings, Topics
from tierflow.pipeline.ingest.validate import Limits, parse_record
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.state.summary import encode

STARTED = time.monotonic()
# A checkpoint also closes after this many seconds without reaching commit_every;
# short, so the tail of the run does not wait on it.
COMMIT_INTERVAL_S = 0.25


class Progress:
    """Counts finished records; times the first record in hand to the last one applied."""

    def __init__(self, app: Application, spec: dict[str, Any]) -> None:
        self.app = app
        self.target = spec["records"]
        self.records = self.events = self.applied = self.rejected = 0
        self.t0: float | None = None
        self.t1: float | None = None

    def begin(self) -> None:
        if self.t0 is None:
            self.t0 = time.monotonic()

    def done(self, records: int, events: int, applied: int, rejected: int) -> None:
        self.records += records
        self.events += events
        self.applied += applied
        self.rejected += rejected
        if self.records >= self.target and self.t1 is None:
            self.t1 = time.monotonic()
            self.app.stop()

    def result(self) -> dict[str, object]:
        assert self.t0 is not None and self.t1 is not None
        return {
            "records": self.records, "events": self.events, "applied": self.applied,
            "rejected": self.rejected, "seconds": self.t1 - self.t0, "startup_s": self.t0 - STARTED,
        }


class StateSink(BatchingSink):
    """Applies one partition's checkpoint batch with a single pipelined Redis call."""

    def __init__(self, store: StateStore, limits: Limits, progress: Progress) -> None:
        super().__init__()
        self.store = store
        self.limits = limits
        self.progress = progress

    def add(self, *args: Any, **kwargs: Any) -> None:
        self.progress.begin()
        super().add(*args, **kwargs)

    def write(self, batch: SinkBatch) -> None:
        now_ms = int(time.time() * 1000)
        source = f"{batch.topic}:{batch.partition}"
        groups: dict[tuple[str, str], list[list[object]]] = defaultdict(list)
        events = rejected = 0
        for item in batch:
            valid, bad = parse_record(item.value, item.key, self.limits, now_ms)
            for v in valid:
                groups[(v.event.user_id, source)].append(encode(v.event, v.ts_ms, item.offset, item.timestamp))
            events += len(valid)
            rejected += len(bad)
        applied = self.store.apply(groups).count
        self.progress.done(batch.size, events, applied, rejected)


def main(spec: dict[str, Any]) -> int:
    settings = replace(Settings.from_env(), topics=Topics(prefix=spec["prefix"]),
                       group_id=spec["group"], redis_url=spec["redis_url"])
    config = load_config(settings.config_path)
    ingest = config.ingest
    limits = Limits.of(ingest)
    store = StateStore.of(connect(settings.redis_url), config.state)
    per_message = spec["contender"] == "quix-msg"
    with tempfile.TemporaryDirectory(prefix="quix-state-") as state_dir:
        app = Application(
            broker_address=settings.kafka.bootstrap,
            consumer_group=settings.group_id,
            auto_offset_reset="earliest",
            commit_every=ingest.batch_max_records,
            commit_interval=COMMIT_INTERVAL_S,
            state_dir=state_dir,
            use_changelog_topics=False,
            auto_create_topics=False,
            loglevel="WARNING",
        )
        progress = Progress(app, spec)

        def apply_one(value: bytes, key: bytes, timestamp: int, _headers: object) -> None:
            progress.begin()
            ctx = message_context()
            now_ms = int(time.time() * 1000)
            valid, bad = parse_record(value, key, limits, now_ms)
            source = f"{ctx.topic}:{ctx.partition}"
            groups: dict[tuple[str, str], list[list[object]]] = defaultdict(list)
            for v in valid:
                groups[(v.event.user_id, source)].append(encode(v.event, v.ts_ms, ctx.offset, timestamp))
            progress.done(1, len(valid), store.apply(groups).count, len(bad))

        for name in settings.topics.inputs:
            topic = app.topic(name, key_deserializer="bytes", value_deserializer="bytes")
            sdf = app.dataframe(topic)
            if per_message:
                sdf.update(apply_one, metadata=True)
            else:
                sdf.sink(StateSink(store, limits, progress))
        app.run()
    Path(spec["result_path"]).write_bytes(orjson.dumps(progress.result()))
    return 0


if __name__ == "__main__":
    sys.exit(main(orjson.loads(sys.argv[1])))
