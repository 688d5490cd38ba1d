"""The Quix Streams contender of `python -m bench`: the same state work as the
tierflow worker's state and tier stages, in Quix's own state store.

    .venv-quix/bin/python -m bench.quix_tiers SPEC_JSON

The four input topics are concatenated into one StreamingDataFrame (a customer
is on the same partition number of every input topic), so one stateful apply
per record sees all of a customer's events: tierflow's own validation
(`parse_record`), then the rolling R/F/M buckets and tier rules of
bench/tierwork.py kept in Quix's RocksDB state (with its changelog topic), and
each change record produced to an output topic. Quix's defaults otherwise
(at-least-once, commit every 5 s). Runs in its own virtualenv: every quixstreams
3.x pins an older confluent-kafka than tierflow (bench/README.md).
"""

from __future__ import annotations

import sys
import tempfile
import time
from typing import Any

import orjson
from quixstreams import Application
from quixstreams.state import State

from bench.meter import Meter
from bench.tierwork import PopulationCounts, apply_event, changes, new_state
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.config.settings import Settings, Topics
from tierflow.pipeline.ingest.validate import Limits, parse_record


def main(spec: dict[str, Any]) -> int:
    settings = Settings.from_env()
    topics = Topics(prefix=spec["prefix"])
    config = load_config(settings.config_path)
    limits = Limits.of(config.ingest)
    keep_days = max(config.state.windows_days)
    population = PopulationCounts()
    meter = Meter(spec["records"], spec["cap_s"])
    with tempfile.TemporaryDirectory(prefix="quix-state-") as state_dir:
        app = Application(
            broker_address=settings.kafka.bootstrap, consumer_group=spec["group"],
            auto_offset_reset="earliest", state_dir=state_dir, loglevel="WARNING",
        )

        def work(value: bytes, key: bytes, _timestamp: int, _headers: object, state: State) -> list[dict]:
            now_ms = int(time.time() * 1000)
            valid, _rejected = parse_record(value, key, limits, now_ms)
            out: list[dict] = []
            if valid:
                user_id = valid[0].event.user_id
                customer = state.get("c") or new_state()
                for event in valid:
                    apply_event(customer, event, keep_days)
                out = changes(user_id, customer, config, population, now_ms)
                state.set("c", customer)
            if meter.add(1, len(valid)):
                app.stop()
            return out

        frames = [app.dataframe(app.topic(name, key_deserializer="bytes", value_deserializer="bytes"))
                  for name in topics.inputs]
        sdf = frames[0]
        for frame in frames[1:]:
            sdf = sdf.concat(frame)
        sdf = sdf.apply(work, stateful=True, metadata=True, expand=True)
        sdf.to_topic(app.topic(spec["out_topic"], key_serializer="str", value_serializer="json"),
                     key=lambda change: change["user_id"])
        app.run()
    meter.write(spec["result_path"])
    return 0


if __name__ == "__main__":
    sys.exit(main(orjson.loads(sys.argv[1])))
