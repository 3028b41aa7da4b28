"""The event model's own helpers: timestamps and ids."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from event_router.api import event as event_module
from event_router.api.event import Event, new_event_id, utc_now


@given(st.integers(min_value=0, max_value=4_102_444_800 * 10**9))  # 1970 .. 2100
def test_utc_now_is_rfc3339_milliseconds(ns: int) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(time, "time_ns", lambda: ns)
        stamp = utc_now()
    expected = datetime.fromtimestamp(ns // 1_000_000 / 1000, UTC).isoformat(timespec="milliseconds")
    assert stamp == expected.replace("+00:00", "Z")


def test_utc_now_follows_the_clock_across_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    # the formatted second is cached: moving to the next second (or back) must not reuse it
    for ns in (1_700_000_000_999_000_000, 1_700_000_001_000_000_000, 1_699_999_000_000_000_000):
        monkeypatch.setattr(time, "time_ns", lambda ns=ns: ns)
        assert utc_now() == datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    assert event_module._stamp[0] == 1_699_999_000


def test_event_ids_are_uuid7_and_unique() -> None:
    ids = [new_event_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", i) for i in ids)
    event = Event(trigger="t", data=None, source="s")
    assert event.received_at.endswith("Z") and len(event.received_at) == len("2026-01-01T00:00:00.000Z")
