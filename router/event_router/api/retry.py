"""Retry policy: exponential backoff with full jitter, bounded by attempts and/or age."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from event_router.api.durations import DURATION_SCHEMA, parse_duration

RETRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "max_attempts": {"type": "integer", "minimum": 1},
        "max_age": DURATION_SCHEMA,
        "initial_backoff": DURATION_SCHEMA,
        "max_backoff": DURATION_SCHEMA,
        "multiplier": {"type": "number", "minimum": 1},
    },
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try a failed delivery again, and when to give up and dead-letter it."""

    max_attempts: int = 10
    #: seconds since the first attempt after which a failure is final (0 = no age limit)
    max_age: float = 86400.0
    initial_backoff: float = 1.0
    max_backoff: float = 300.0
    multiplier: float = 2.0

    def merged(self, table: Mapping[str, Any]) -> RetryPolicy:
        """This policy with the keys of a `retry = {...}` table (already schema-checked) applied."""
        changes: dict[str, Any] = {}
        for key, value in table.items():
            changes[key] = value if key in ("max_attempts", "multiplier") else parse_duration(value)
        return replace(self, **changes)

    def delay(
        self,
        attempts: int,
        retry_after: float | None = None,
        rng: random.Random | None = None,
        *,
        age: float | None = None,
    ) -> float:
        """Seconds to wait after the `attempts`-th failure, `age` seconds after the first attempt. Full jitter
        spreads retries of an outage.

        A receiver's Retry-After wins over the computed backoff (it knows when it will be back), within the
        same bounds: never more than `max_backoff`, and never past `max_age` (the attempt at that moment is
        the last). A non-finite Retry-After is ignored. So every delivery is tried again, or dead-lettered,
        within `max_backoff`, whatever a receiver answers.
        """
        if retry_after is not None and math.isfinite(retry_after):
            wait = max(0.0, retry_after)
        else:
            wait = (rng or random).uniform(0, self._ceiling(attempts))
        wait = min(wait, self.max_backoff)
        if self.max_age > 0 and age is not None:
            wait = min(wait, max(0.0, self.max_age - age))
        return wait

    def _ceiling(self, attempts: int) -> float:
        """The most the computed backoff waits after the `attempts`-th failure: `initial_backoff` growing by
        `multiplier` per failure up to `max_backoff`. Finite for any count: an input reconnecting for days,
        or a delivery with a huge `max_attempts`, fails a thousand times and more (2.0 ** 1024 overflows)."""
        if self.initial_backoff <= 0:
            return 0.0
        try:
            growth = self.multiplier ** max(0, attempts - 1)
        except OverflowError:
            return self.max_backoff
        return min(self.max_backoff, self.initial_backoff * growth)

    def exhausted(self, attempts: int, age: float) -> bool:
        """True when no further attempt is allowed after `attempts` failures, `age` seconds in."""
        return attempts >= self.max_attempts or (self.max_age > 0 and age >= self.max_age)
