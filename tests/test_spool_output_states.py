"""The spool's record of each output's state (paused by an operator, a router's breaker open) on each backend
(a real SQLite file, a scratch PostgreSQL database): it outlives a reopen, an operator's spool beside the
router's sees and changes it, an open breaker's record lapses, and a router clears only its own."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from event_router.core.spool import OutputState, Spool
from event_router.core.spool.sqlite import SCHEMA_VERSION, SQLiteSpool

pytestmark = pytest.mark.anyio


async def test_a_pause_is_kept_across_a_reopen_and_seen_by_an_operators_spool(spool_at: Callable[[], Spool]) -> None:
    router = spool_at()
    router.open("exclusive")
    try:
        assert router.output_states() == {}
        operator = spool_at()
        operator.open("shared")
        try:
            state, changed = operator.set_paused("crm", True, "alice@ops1 (event-router output pause)")
            assert changed and state.paused and state.pause_changed_by == "alice@ops1 (event-router output pause)"
            assert state.pause_changed_at is not None and abs(state.pause_changed_at - time.time()) < 5
            again, changed = operator.set_paused("crm", True, "bob@ops2")
            assert not changed, "pausing a paused output changes nothing"
            assert (again.pause_changed_by, again.pause_changed_at) == (state.pause_changed_by, state.pause_changed_at)
            untouched, changed = operator.set_paused("archive", False, "bob@ops2")
            assert not changed and untouched == OutputState("archive")
        finally:
            operator.close()
        # the router's own reader sees what another process committed
        seen = router.output_states()
        assert list(seen) == ["crm"] and seen["crm"].paused
    finally:
        router.close()
    reopened = spool_at()
    reopened.open("readonly")
    try:
        assert reopened.output_states()["crm"].paused
    finally:
        reopened.close()
    router = spool_at()
    router.open("exclusive")
    try:
        state, changed = router.set_paused("crm", False, "admin endpoint (127.0.0.1)")
        assert changed and not state.paused and state.pause_changed_by == "admin endpoint (127.0.0.1)"
        assert not router.output_states()["crm"].paused
    finally:
        router.close()


async def test_an_open_breaker_is_recorded_lapses_and_is_cleared_only_by_its_router(
    spool_at: Callable[[], Spool],
) -> None:
    spool = spool_at()
    spool.open("exclusive")
    try:
        opened = time.time() - 3
        await spool.record_breaker("crm", router="host:1", open_since=opened, error="answered 503", lapse=60)
        state = spool.output_states()["crm"]
        assert state.breaker_open_since == pytest.approx(opened)
        assert (state.breaker_router, state.breaker_error) == ("host:1", "answered 503")
        assert not state.paused
        # another router's breaker closing leaves this one's record: it still holds the output open
        await spool.record_breaker("crm", router="host:2", open_since=None)
        assert spool.output_states()["crm"].breaker_router == "host:1"
        await spool.record_breaker("crm", router="host:1", open_since=None)
        assert spool.output_states()["crm"].breaker_open_since is None
        # a router that died renews nothing: its record lapses, and then anyone's close clears it
        await spool.record_breaker("crm", router="host:3", open_since=time.time(), error="timeout", lapse=0.5)
        assert spool.output_states()["crm"].breaker_router == "host:3"
        await anyio.sleep(0.7)
        assert spool.output_states()["crm"] == OutputState("crm"), "a lapsed record reads as closed"
        await spool.record_breaker("crm", router="host:2", open_since=None)
        # a pause and a breaker are one row, neither overwriting the other
        spool.set_paused("crm", True, "ops")
        await spool.record_breaker("crm", router="host:1", open_since=time.time(), error="x", lapse=60)
        state = spool.output_states()["crm"]
        assert state.paused and state.breaker_router == "host:1"
        spool.set_paused("crm", False, "ops")
        assert spool.output_states()["crm"].breaker_router == "host:1"
    finally:
        spool.close()


async def test_a_schema_3_spool_gets_the_table_and_status_beside_an_older_one_shows_none(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = SQLiteSpool(path)
    spool.open("exclusive")
    spool.close()
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE output_states; UPDATE meta SET value = '3' WHERE key = 'schema_version';")
    conn.close()
    # `status` of a newer router beside an older one still running on the spool: no paused output to show
    old = SQLiteSpool(path)
    old.open("readonly")
    try:
        assert old.output_states() == {}
    finally:
        old.close()
    upgraded = SQLiteSpool(path)
    upgraded.open("exclusive")
    try:
        assert upgraded.set_paused("crm", True, "ops")[1]
    finally:
        upgraded.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert conn.execute("SELECT output, paused FROM output_states").fetchall() == [("crm", 1)]
    finally:
        conn.close()
