"""A log line per kind of event and minute, not one per event: for floods (refused requests, parked
deliveries) that a metric counts exactly."""

from __future__ import annotations

import time
from collections import OrderedDict


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
