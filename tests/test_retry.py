"""The retry policy's arithmetic: full jitter under a growing, capped ceiling; give-up rules."""

from __future__ import annotations

import math
import random

import pytest

from event_router.api.retry import RetryPolicy
from event_router.web.http_answers import retry_after_seconds


@pytest.mark.parametrize(("attempts", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (9, 60.0), (30, 60.0)])
def test_full_jitter_stays_under_the_ceiling(attempts: int, ceiling: float) -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=60.0, multiplier=2.0)
    rng = random.Random(7)
    delays = [policy.delay(attempts, rng=rng) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # spread over the whole range, not clustered: the point of full jitter
    assert min(delays) < ceiling * 0.1 and max(delays) > ceiling * 0.9


def test_retry_after_wins_within_max_backoff() -> None:
    assert RetryPolicy(max_backoff=300.0).delay(9, retry_after=120.0) == 120.0
    assert RetryPolicy(max_backoff=1.0).delay(1, retry_after=120.0) == 1.0
    assert RetryPolicy().delay(3, retry_after=-5) == 0.0


@pytest.mark.parametrize("retry_after", [math.inf, float("1e400"), 1e300, 10.0**12])
def test_no_retry_after_parks_a_delivery_past_max_backoff_or_max_age(retry_after: float) -> None:
    policy = RetryPolicy(max_backoff=60.0, max_age=3600.0)
    assert 0.0 <= policy.delay(1, retry_after=retry_after, age=0.0) <= 60.0
    # near max_age, the last attempt is due when max_age runs out, not after
    assert policy.delay(1, retry_after=retry_after, age=3590.0) <= 10.0
    assert policy.delay(1, retry_after=retry_after, age=4000.0) == 0.0
    assert RetryPolicy(max_backoff=60.0, max_age=0.0).delay(1, retry_after=retry_after, age=10**9) <= 60.0


def test_a_nan_retry_after_falls_back_to_the_backoff() -> None:
    assert 0.0 <= RetryPolicy(initial_backoff=1.0).delay(1, retry_after=math.nan) <= 1.0


def test_a_huge_attempt_count_waits_max_backoff_instead_of_overflowing() -> None:
    # what a broker input down for days, or max_attempts = 100000, reaches: 2.0 ** 1024 overflows a float
    assert 0.0 <= RetryPolicy(max_age=0, max_backoff=30.0).delay(5000) <= 30.0
    assert 0.0 <= RetryPolicy(multiplier=1e300).delay(3) <= 300.0
    assert RetryPolicy(initial_backoff=0.0).delay(5000) == 0.0


def test_the_computed_backoff_stops_at_max_age() -> None:
    policy = RetryPolicy(initial_backoff=100.0, max_backoff=100.0, max_age=60.0)
    assert all(policy.delay(5, age=55.0) <= 5.0 for _ in range(100))


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("inf", None),
        ("Infinity", None),
        ("1e400", None),
        ("nan", None),
        ("-5", 0.0),
        ("120", 120.0),
        ("soon", None),
        ("Fri, 31 Dec 9999 23:59:59 GMT", "huge"),
    ],
)
def test_retry_after_header_is_finite_or_ignored(header: str, seconds: float | str | None) -> None:
    parsed = retry_after_seconds(header)
    if seconds == "huge":
        assert parsed is not None and math.isfinite(parsed) and parsed > 10**9
    else:
        assert parsed == seconds


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


def test_the_readmes_quick_start_time_to_a_dead_letter_follows_from_the_default_policy() -> None:
    """README: 10 attempts, 9 random waits up to 1, 2, 4 ... 256 s: 0 to 8.5 minutes, about 4 1/4 on average,
    roughly 2 to 6 1/2 nine times in ten."""
    from pathlib import Path

    policy = RetryPolicy()
    ceilings = [policy.delay(n, rng=_Top()) for n in range(1, policy.max_attempts)]
    assert ceilings == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert sum(ceilings) / 60 == pytest.approx(8.5, abs=0.05)
    assert sum(ceilings) / 2 / 60 == pytest.approx(4.25, abs=0.05)
    rng = random.Random(7)
    totals = sorted(sum(policy.delay(n, rng=rng) for n in range(1, policy.max_attempts)) for _ in range(20000))
    # roughly 2 to 6 1/2 minutes nine times in ten (5th and 95th percentiles: about 117 s and 395 s)
    assert 110 <= totals[len(totals) // 20] <= 125 and 385 <= totals[len(totals) * 19 // 20] <= 405
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "anywhere from\nmoments to 8.5 minutes after the first, about 4¼ minutes on average" in readme


class _Top(random.Random):
    """Draws the top of every range: the ceiling of each wait."""

    def uniform(self, a: float, b: float) -> float:
        return b
