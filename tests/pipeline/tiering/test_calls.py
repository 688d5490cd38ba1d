"""Lua calls by hash against a real Redis: a script the server does not hold (never
loaded, or lost in a restart) is loaded and the pipeline sent again, in order."""

from __future__ import annotations

import uuid

from redis.client import Pipeline

from tierflow.pipeline.state.store import connect
from tierflow.pipeline.tiering import calls


def test_a_script_the_server_lacks_is_loaded_and_the_pipeline_sent_once_more(redis_url: str) -> None:
    client = connect(redis_url)
    # A script text never seen by this server (a unique comment), so its hash is unknown there.
    script = client.register_script(f"-- {uuid.uuid4().hex}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert client.script_exists(script.sha) == [False]

    def build(pipe: Pipeline) -> None:
        calls.call(pipe, script, ["n"], [2])
        pipe.get("n")
        calls.call(pipe, script, ["n"], [3])

    # NOSCRIPT fails every call of the first send, so nothing is counted twice.
    assert calls.run(client, [script], build) == [2, "2", 5]
    assert client.script_exists(script.sha) == [True]
    assert calls.run(client, [script], build) == [7, "7", 10]
