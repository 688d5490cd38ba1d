"""Pipelined Lua calls in one round trip each.

A redis-py pipeline holding registered scripts asks the server whether it has them
(SCRIPT EXISTS) before every execute: a second round trip per pipeline. Tiering calls
its scripts by hash instead and, when the server has lost them (a restart, a SCRIPT
FLUSH), loads them and sends the pipeline again. Every tiering call is idempotent
(see store.py), so sending one again is safe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import NoScriptError


def call(pipe: Pipeline, script: Script, keys: Sequence[str], args: Sequence[object]) -> None:
    """Queue one call of `script` by its hash."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


def run(client: redis.Redis, scripts: Sequence[Script], build: Callable[[Pipeline], None]) -> list[Any]:
    """Fill a pipeline with `build` and execute it; on NOSCRIPT load `scripts` and send it once more."""

    def send() -> list[Any]:
        pipe = client.pipeline(transaction=False)
        build(pipe)
        return pipe.execute()

    try:
        return send()
    except NoScriptError:
        for script in scripts:
            script.sha = client.script_load(script.script)
        return send()
