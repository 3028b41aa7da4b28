"""In-process counters: what `status`, logs and (later) /metrics report."""

from __future__ import annotations

import threading
from collections import Counter


class Stats:
    """Labelled counters. Cheap enough for the per-event path: one dict update under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

    def incr(self, name: str, amount: int = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] += amount

    def get(self, name: str, **labels: str) -> int:
        """Sum of `name` over every label set that contains `labels`."""
        wanted = set(labels.items())
        with self._lock:
            return sum(v for (n, lab), v in self._counters.items() if n == name and wanted <= set(lab))

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                name + ("{" + ",".join(f"{k}={v}" for k, v in lab) + "}" if lab else ""): value
                for (name, lab), value in sorted(self._counters.items())
            }
