"""The one loader of the Redis Lua scripts, and the Redis client types. Each script
sits beside the module that calls it, so the Python and the Lua it relies on are
read together.

Scripts are called by hash from pipelines (`call`): a redis-py pipeline holding
registered scripts would ask the server whether it has them (SCRIPT EXISTS) before
every execute, and a Redis Cluster pipeline refuses them. A caller that meets
NOSCRIPT (a restart, a failover, SCRIPT FLUSH) loads its scripts (`load`, on every
primary of a cluster) and sends again what did not run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import redis
from redis.client import Pipeline as _Pipeline
from redis.cluster import ClusterPipeline, RedisCluster
from redis.commands.core import Script

# A single server, or a Redis Cluster (state/store.py `connect` picks one).
Redis = redis.Redis | RedisCluster
# Commands of one round trip; on a cluster, one batch per node, never a cross-slot MULTI.
Pipeline = _Pipeline | ClusterPipeline


def register(client: Redis, caller_file: str, name: str) -> Script:
    """`name`.lua from the folder of `caller_file` (pass `__file__`), bound to `client`."""
    return client.register_script(Path(caller_file).with_name(f"{name}.lua").read_text())


def call(pipe: Pipeline, script: Script, keys: Sequence[str], args: Sequence[object]) -> None:
    """Queue one call of `script` by its hash."""
    # execute_command: ClusterPipeline blocks its evalsha method, not the command, which
    # it routes by the first key like any other.
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


def load(client: Redis, scripts: Iterable[Script]) -> None:
    """Load the scripts on the server (on every primary of a cluster)."""
    for script in scripts:
        script.sha = client.script_load(script.script)
