"""Idempotency-Key: a write answered once per key. The same key with the same request
(method, path and JSON body) gets the stored answer again and changes nothing; with
another request it is refused (422). Kept in Redis, so every API process agrees.

    1. SET key {fingerprint, pending} NX with a short lock time;
    2. taken: run the write, then store {fingerprint, status, body} for the key's lifetime;
    3. not taken: the stored answer, 422 for another request, 409 while it still runs.

A write that fails unexpectedly frees the key. If the process dies mid-write, the
lock expires and a retry runs the write again; each write is itself once per
reference (the Idempotency-Key is its reference), so it still happens once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import orjson

from tierflow.pipeline import keyspace
from tierflow.pipeline.lua import Redis

# In this deployment's Redis namespace; the scope (caller, customer) is hashed into the name.
KEY_PREFIX = keyspace.key("tf:api:idem:")


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, object]
    replayed: bool = False


Conflict = Literal["in_progress", "mismatch"]


def fingerprint(method: str, path: str, body: object) -> str:
    canonical = orjson.dumps([method, path, body], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


class IdempotencyStore:
    def __init__(self, client: Redis, ttl_s: int, lock_s: int) -> None:
        self.client, self.ttl_s, self.lock_s = client, ttl_s, lock_s

    def _key(self, scope: str, key: str) -> str:
        return KEY_PREFIX + hashlib.sha256(orjson.dumps([scope, key])).hexdigest()

    def begin(self, scope: str, key: str, print_: str) -> Answer | Conflict | None:
        """None: the caller runs the write. Else the stored answer or why not."""
        name = self._key(scope, key)
        if self.client.set(name, orjson.dumps({"fingerprint": print_}), nx=True, ex=self.lock_s):
            return None
        stored = self.client.get(name)
        if stored is None:  # expired just now: take it again
            return self.begin(scope, key, print_)
        found = orjson.loads(stored)
        if found["fingerprint"] != print_:
            return "mismatch"
        if "status" not in found:
            return "in_progress"
        return Answer(found["status"], found["body"], replayed=True)

    def finish(self, scope: str, key: str, print_: str, answer: Answer) -> None:
        doc = {"fingerprint": print_, "status": answer.status, "body": answer.body}
        self.client.set(self._key(scope, key), orjson.dumps(doc), ex=self.ttl_s)

    def abandon(self, scope: str, key: str) -> None:
        self.client.delete(self._key(scope, key))

    def run(self, scope: str, key: str, print_: str, write: Callable[[], Answer]) -> Answer | Conflict:
        """Blocking: meant for a worker thread."""
        begun = self.begin(scope, key, print_)
        if begun is not None:
            return begun
        try:
            answer = write()
        except BaseException:
            self.abandon(scope, key)
            raise
        self.finish(scope, key, print_, answer)
        return answer


