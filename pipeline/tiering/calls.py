"""Pipelined Lua calls in one round trip each, by hash (pipeline/lua.py).

When the server has lost the scripts (a restart, a SCRIPT FLUSH), tiering loads
them and sends the pipeline again. Every tiering call is idempotent (see
store.py), so sending one again is safe, also on a cluster where the nodes that
still had the scripts ran their part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from redis.commands.core import Script
from redis.exceptions import NoScriptError

from tierflow.pipeline.lua import Pipeline, Redis, call, load

__all__ = ["call", "run"]


def run(client: Redis, scripts: Sequence[Script], build: Callable[[Pipeline], None]) -> list[Any]:
    """Fill a pipeline with `build` and execute it; on NOSCRIPT load `scripts` and send it once more."""

    def send() -> list[Any]:
        pipe = client.pipeline(transaction=False)
        build(pipe)
        return pipe.execute()

    try:
        return send()
    except NoScriptError:
        load(client, scripts)
        return send()
