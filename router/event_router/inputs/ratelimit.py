"""Per-client token buckets, so one noisy sender cannot starve the others (the webhook's `rate_limit`)."""

from __future__ import annotations

import time
from collections import OrderedDict


class RateLimiter:
    """`rate` requests per second per key, with bursts up to `burst`. Remembers at most `max_keys` keys."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 10_000):
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, now: float | None = None) -> float:
        """0.0 when the request may pass; otherwise the seconds until one token is back."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:  # least recently seen first: a flood of addresses stays bounded
            self._buckets.popitem(last=False)
        return wait
