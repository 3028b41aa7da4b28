"""Per-client token buckets, so one noisy sender cannot starve the others."""

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


class LogThrottle:
    """Keeps a flood of like events (refused requests, one client's) from filling the log.

    The first event of a key is logged; the next ones within `window` seconds are only counted, and the
    first after it is logged with that count. At most `max_lines` lines per window over all keys, so many
    addresses cannot flood it either; at most `max_keys` keys are remembered (least recently seen go first,
    their count with them: the metric beside the log line has the exact number).
    """

    def __init__(self, window: float = 60.0, *, max_lines: int = 50, max_keys: int = 1000):
        self.window = window
        self.max_lines = max_lines
        self.max_keys = max_keys
        #: key -> (when it was last logged, events counted since)
        self._keys: OrderedDict[object, tuple[float, int]] = OrderedDict()
        self._window_start = -float("inf")
        self._lines = 0

    def admit(self, key: object, now: float | None = None) -> int | None:
        """None: do not log this one (it is counted); else log it, saying how many were held back before it."""
        now = time.monotonic() if now is None else now
        if now - self._window_start >= self.window:
            self._window_start, self._lines = now, 0
        last, held = self._keys.pop(key, (-float("inf"), 0))
        if now - last < self.window or self._lines >= self.max_lines:
            self._keys[key] = (last, held + 1)
            admitted = None
        else:
            self._keys[key] = (now, 0)
            self._lines += 1
            admitted = held
        if len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return admitted
