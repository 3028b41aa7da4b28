"""Token buckets: `rate_limit = { per_second = N, burst = M }`, the one syntax for the webhook input's limit
(per client: what is over it is refused at once) and an output's (one bucket for the output: what is over it
waits). Both are the same `RateLimiter`."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio

#: JSON Schema of a `rate_limit` table, wherever one is allowed
RATE_LIMIT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["per_second"],
    "properties": {
        "per_second": {"type": "number", "exclusiveMinimum": 0},
        "burst": {"type": "number", "minimum": 1},
    },
}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A `rate_limit` table: `per_second` on average, with bursts up to `burst`."""

    per_second: float
    #: at least 1, or not a single request would ever pass
    burst: float

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> RateLimit:
        """From a table the schema accepted. `burst` defaults to a second's worth, and to 1 below 1/s."""
        per_second = float(table["per_second"])
        return cls(per_second, float(table.get("burst", max(1.0, per_second))))


class RateLimiter:
    """`rate` requests per second per key, with bursts up to `burst`. Remembers at most `max_keys` keys."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 10_000):
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @classmethod
    def of(cls, limit: RateLimit, *, max_keys: int = 10_000) -> RateLimiter:
        return cls(limit.per_second, limit.burst, max_keys=max_keys)

    def allow(self, key: str, now: float | None = None) -> float:
        """0.0 when the request may pass (it took a token); otherwise the seconds until one token is back
        (nothing was taken)."""
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


class Pace:
    """One consumer held to a `RateLimit` by waiting, never by refusing: an output's `rate_limit`.

    Its only consumer is the output's worker loop, so nothing takes a token between the wait and the take.
    """

    def __init__(self, limit: RateLimit, *, clock: Callable[[], float] = anyio.current_time):
        self.limit = limit
        self._bucket = RateLimiter.of(limit, max_keys=1)
        self._clock = clock

    async def take(self, most: int) -> tuple[int, float]:
        """Wait for a token and take it, then up to `most - 1` more that are there at once (a batch); returns
        how many were taken and the seconds waited."""
        waited = 0.0
        while (wait := self._bucket.allow("", self._clock())) > 0:
            await anyio.sleep(wait)
            waited += wait
        taken, now = 1, self._clock()
        while taken < most and self._bucket.allow("", now) == 0:
            taken += 1
        return taken, waited
