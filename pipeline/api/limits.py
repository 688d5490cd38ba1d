"""Rate limiting: a token bucket per client (the token it presented and its address),
in the serving process's memory. Pure apart from the clock the caller passes in."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    at_s: float


@dataclass
class RateLimiter:
    rate_per_s: float
    burst: int
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _swept_s: float = 0.0

    def wait_s(self, client: str, now_s: float) -> float:
        """0 when the request may pass (and is counted), else the seconds until it may."""
        self._sweep(now_s)
        bucket = self._buckets.setdefault(client, _Bucket(float(self.burst), now_s))
        bucket.tokens = min(float(self.burst), bucket.tokens + (now_s - bucket.at_s) * self.rate_per_s)
        bucket.at_s = now_s
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate_per_s

    def _sweep(self, now_s: float) -> None:
        """Forget the clients whose bucket has filled up again: a new bucket is the same.
        At most once per refill time, so memory follows the clients of the last moments."""
        refill_s = self.burst / self.rate_per_s
        if now_s - self._swept_s < refill_s:
            return
        self._swept_s = now_s
        self._buckets = {c: b for c, b in self._buckets.items() if now_s - b.at_s < refill_s}
