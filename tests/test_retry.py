"""The retry policy's arithmetic: full jitter under a growing, capped ceiling; give-up rules."""

from __future__ import annotations

import random

import pytest

from event_router.retry import RetryPolicy


@pytest.mark.parametrize(("attempts", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (9, 60.0), (30, 60.0)])
def test_full_jitter_stays_under_the_ceiling(attempts: int, ceiling: float) -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=60.0, multiplier=2.0)
    rng = random.Random(7)
    delays = [policy.delay(attempts, rng=rng) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # spread over the whole range, not clustered: the point of full jitter
    assert min(delays) < ceiling * 0.1 and max(delays) > ceiling * 0.9


def test_retry_after_wins() -> None:
    assert RetryPolicy(max_backoff=1.0).delay(1, retry_after=120.0) == 120.0
    assert RetryPolicy().delay(3, retry_after=-5) == 0.0


@pytest.mark.parametrize(
    ("policy", "attempts", "age", "exhausted"),
    [
        (RetryPolicy(max_attempts=3), 2, 0.0, False),
        (RetryPolicy(max_attempts=3), 3, 0.0, True),
        (RetryPolicy(max_attempts=100, max_age=60.0), 5, 59.0, False),
        (RetryPolicy(max_attempts=100, max_age=60.0), 5, 60.0, True),
        (RetryPolicy(max_attempts=100, max_age=0.0), 99, 10**9, False),
    ],
)
def test_exhausted(policy: RetryPolicy, attempts: int, age: float, exhausted: bool) -> None:
    assert policy.exhausted(attempts, age) is exhausted


def test_merged_parses_durations() -> None:
    policy = RetryPolicy().merged({"max_attempts": 4, "initial_backoff": "250ms", "max_age": "2h"})
    assert (policy.max_attempts, policy.initial_backoff, policy.max_age) == (4, 0.25, 7200.0)
