"""The API's settings, from the environment (docs/api.md)."""

from __future__ import annotations

from dataclasses import dataclass

from tierflow.pipeline.config.settings import MAX_PORT, _int_env

# Upper bounds that only catch typos (a rate of a million requests a second is one).
_MAX_RATE = 1_000_000
_MAX_TTL_S = 30 * 86_400


@dataclass(frozen=True)
class ApiSettings:
    port: int = 6067
    # Requests per second each client (token and address) may make, and the burst it may
    # make at once after a quiet spell (a token bucket of that size).
    rate_per_s: int = 20
    burst: int = 40
    # How long an Idempotency-Key's answer is kept: a retry within it gets the same answer.
    idempotency_ttl_s: int = 86_400
    # How long a write in progress holds its key: a retry after a crash may run it again
    # (the write itself happens once: each is once per reference).
    idempotency_lock_s: int = 30

    @classmethod
    def from_env(cls) -> ApiSettings:
        return cls(
            port=_int_env("TIERFLOW_API_PORT", cls.port, 0, MAX_PORT),
            rate_per_s=_int_env("TIERFLOW_API_RATE", cls.rate_per_s, 1, _MAX_RATE),
            burst=_int_env("TIERFLOW_API_BURST", cls.burst, 1, _MAX_RATE),
            idempotency_ttl_s=_int_env("TIERFLOW_API_IDEMPOTENCY_TTL_S", cls.idempotency_ttl_s, 1, _MAX_TTL_S),
            idempotency_lock_s=_int_env("TIERFLOW_API_IDEMPOTENCY_LOCK_S", cls.idempotency_lock_s, 1, _MAX_TTL_S),
        )
