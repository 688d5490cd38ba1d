"""The naive contender of `python -m bench`: the obvious Faust design. One agent
over the four input topics; per event, read the customer's state from Redis,
apply it, evaluate the tier rules, write the state back, and send each change
record to an output topic. The state work is bench/tierwork.py, as for Quix.

    python -m bench.naive SPEC_JSON
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from typing import Any

import faust
import orjson
import redis

from bench.meter import Meter
from bench.tierwork import PopulationCounts, apply_event, changes, new_state
from tierflow.agents.app import faust_broker_credentials, faust_datadir
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.config.settings import Settings, Topics
from tierflow.pipeline.ingest.validate import Limits, parse_record

STATE_KEY = "bench:naive:{}"


def main(spec: dict[str, Any]) -> int:
    settings = Settings.from_env()
    ctx = Context(settings, load_config(settings.config_path))
    config = ctx.config
    limits = Limits.of(config.ingest)
    keep_days = max(config.state.windows_days)
    client = redis.Redis.from_url(spec["redis_url"])
    population = PopulationCounts()
    meter = Meter(spec["records"], spec["cap_s"])
    app = faust.App(
        spec["group"],
        broker=[f"kafka://{host}" for host in settings.kafka.bootstrap.split(",")],
        broker_credentials=faust_broker_credentials(ctx),
        value_serializer="raw", store="memory://", web_enabled=False,
        datadir=str(faust_datadir(settings)),
        topic_partitions=settings.partitions, topic_replication_factor=1,
    )
    out = app.topic(spec["out_topic"], key_type=str, value_serializer="json")  # created by the parent

    @app.agent(app.topic(*Topics(prefix=spec["prefix"]).inputs, key_type=bytes))
    async def per_event(stream: faust.StreamT) -> None:
        async for key, value in stream.items():
            now_ms = int(time.time() * 1000)
            valid, _rejected = parse_record(value, key, limits, now_ms)
            for event in valid:
                user_id = event.event.user_id
                stored = client.get(STATE_KEY.format(user_id))
                customer = orjson.loads(stored) if stored else new_state()
                apply_event(customer, event, keep_days)
                found = changes(user_id, customer, config, population, now_ms)
                client.set(STATE_KEY.format(user_id), orjson.dumps(customer))
                for change in found:
                    await out.send(key=user_id, value=change)
            if meter.add(1, len(valid)):
                meter.write(spec["result_path"])
                os.kill(os.getpid(), signal.SIGTERM)  # Faust's own graceful shutdown
                return

    worker = faust.Worker(app, loglevel="warning", quiet=True)
    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main(orjson.loads(sys.argv[1])))
