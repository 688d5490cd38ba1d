"""Where this deployment's keys live in Redis: every key tierflow writes starts with
the namespace (TIERFLOW_REDIS_NAMESPACE, by default the topic prefix), so two
deployments sharing one Redis or one Redis Cluster never read or spend each other's
state, budgets or wallets.

The namespace goes in front of the key, outside its hash tag (`acme.{u:42}:s`):
Redis Cluster hashes only what the braces hold, so every Lua call still touches
one slot. With no namespace (no topic prefix) the keys are the ones tierflow has
always written, and existing data stays readable.

A process serves one deployment: the key builders read the namespace from the
environment once, when this module is imported.
"""

from __future__ import annotations

from tierflow.pipeline.config.settings import redis_namespace_from_env

NAMESPACE = redis_namespace_from_env()


def key(name: str) -> str:
    """`name` (a key, or a SCAN pattern) inside this deployment's namespace."""
    return NAMESPACE + name
