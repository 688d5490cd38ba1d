"""The one loader of the Redis Lua scripts. Each script sits beside the module
that calls it, so the Python and the Lua it relies on are read together."""

from __future__ import annotations

from pathlib import Path

import redis
from redis.commands.core import Script


def register(client: redis.Redis, caller_file: str, name: str) -> Script:
    """`name`.lua from the folder of `caller_file` (pass `__file__`), bound to `client`.
    Pipelines load it on the server on first use, then call it by hash."""
    return client.register_script(Path(caller_file).with_name(f"{name}.lua").read_text())
