"""Retention and replay (#19): the spool keeps delivered events stored with their time (not pending), prunes
them, and gives them new deliveries from another process; on both backends."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from pathlib import Path

import orjson
import psycopg
import pytest

from event_router.core.spool import NewDelivery, Spool, StoreEvent
from event_router.core.spool.postgresql import PRUNE_LOCK
from event_router.core.spool.sqlite import SCHEMA_VERSION, SQLiteSpool
from event_router.testing import (
    delivery_ids,
)

KEY = "retention-key"
ENV = {"ROUTER_WEBHOOK_API_KEY": KEY}
EVERYTHING = (0.0, math.inf)


def kept_event(n: int, received: float | None, *, output: str = "crm") -> StoreEvent:
    body = orjson.dumps({"id": f"e-{n}", "trigger": "transport.messageReceived", "n": n})
    return StoreEvent(f"e-{n}", "transport.messageReceived", body, [NewDelivery(output, "r", None)], received=received)


def due(spool: Spool, output: str = "crm") -> list[tuple[int, str]]:
    return [(row.did, row.event_id) for row in spool.fetch_due(output, spool.clock.now() + 1, 100, ())]


# --- the spool, on both backends ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_delivered_event_stored_with_its_time_is_kept_and_not_pending(spool_at: Callable[[], Spool]) -> None:
    spool = spool_at()
    spool.open("exclusive")
    try:
        stored = await spool.store([kept_event(1, 1000.0), kept_event(2, None), kept_event(3, 1001.0)])
        assert spool.depth == 3
        await spool.settle(done=[ids[0] for ids in delivery_ids(stored)])
        assert spool.depth == 0
        assert spool.pending_outputs() == {}
        status = spool.status()
        assert (status.pending_events, dict(status.backlogs)) == (0, {})
        assert spool.count_kept(*EVERYTHING) == 2, "the event stored without a time is gone with its delivery"
        kept = spool.kept_events(*EVERYTHING)
        assert [(k.event_id, k.received) for k in kept] == [("e-1", 1000.0), ("e-3", 1001.0)]
        assert orjson.loads(kept[1].body)["n"] == 3
        assert spool.count_kept(1000.5, 2000.0) == 1, "[since, until) of the received time"
        # read in pages, each from past the last one read
        page = spool.kept_events(*EVERYTHING, limit=1)
        assert [k.event_id for k in spool.kept_events(*EVERYTHING, after=(page[0].received, page[0].seq))] == ["e-3"]
    finally:
        spool.close()


@pytest.mark.anyio
async def test_a_replay_from_another_process_gives_kept_events_new_deliveries(spool_at: Callable[[], Spool]) -> None:
    """`requeue_kept` as `event-router replay` calls it (a shared open beside the router): the router hands out
    the new deliveries with the same event, and once they are done the event is kept again, not pending. An
    event still pending is given one more delivery."""
    router = spool_at()
    router.open("exclusive")
    try:
        stored = await router.store([kept_event(1, 1000.0), kept_event(2, 1001.0)])
        first, second = (ids[0] for ids in delivery_ids(stored))
        await router.settle(done=[first])  # e-2 stays pending
        kept = {k.event_id: k.seq for k in router.kept_events(*EVERYTHING)}
        replay = spool_at()
        replay.open("shared")
        try:
            requeued = replay.requeue_kept(
                [(kept["e-1"], [NewDelivery("crm", "again", None)]), (kept["e-2"], [NewDelivery("crm", "again", None)])]
            )
            assert requeued == {kept["e-1"], kept["e-2"]}
            assert replay.requeue_kept([(kept["e-1"], [])]) == set(), "nothing to deliver: nothing done"
        finally:
            replay.close()
        handed = due(router)
        assert sorted(event for _, event in handed) == ["e-1", "e-2", "e-2"]
        assert second in {did for did, _ in handed}, "the first delivery of e-2 is still there"
        await router.settle(done=[did for did, _ in handed])
        assert router.status().pending_events == 0
        assert router.count_kept(*EVERYTHING) == 2
    finally:
        router.close()


@pytest.mark.anyio
async def test_prune_forgets_expired_kept_events_without_pending_deliveries(spool_at: Callable[[], Spool]) -> None:
    spool = spool_at()
    spool.open("exclusive")
    try:
        stored = await spool.store([kept_event(n, 100.0 * n) for n in range(1, 6)])
        dids = [ids[0] for ids in delivery_ids(stored)]
        await spool.settle(done=dids[1:])  # e-1 (the oldest) stays pending
        assert await spool.prune_kept(350.0, 1) == 1, "a batch is at most `limit`"
        assert await spool.prune_kept(350.0, 100) == 1
        assert await spool.prune_kept(350.0, 100) == 0
        assert [k.event_id for k in spool.kept_events(*EVERYTHING)] == ["e-1", "e-4", "e-5"]
        await spool.settle(done=dids[:1])
        assert await spool.prune_kept(350.0, 100) == 1, "delivered now: pruned"
        assert await spool.prune_kept(math.inf, 100) == 2, "retention turned off: every kept event goes"
        assert spool.count_kept(*EVERYTHING) == 0
        # and then an event is finished as without retention
        (ids,) = delivery_ids(await spool.store([kept_event(9, None)]))
        await spool.settle(done=ids)
        assert (spool.depth, spool.count_kept(*EVERYTHING)) == (0, 0)
    finally:
        spool.close()


@pytest.mark.anyio
async def test_on_postgresql_one_router_prunes_at_a_time(pg_dsn: str) -> None:
    """Another router holding the prune lock: this one skips its turn (finds nothing), and prunes after."""
    from event_router.core.spool.postgresql import PostgreSQLSpool

    spool = PostgreSQLSpool(pg_dsn)
    spool.open("exclusive")
    try:
        stored = await spool.store([kept_event(1, 10.0), kept_event(2, 20.0)])
        await spool.settle(done=[ids[0] for ids in delivery_ids(stored)])
        with psycopg.connect(pg_dsn, autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (PRUNE_LOCK,))
            assert await spool.prune_kept(100.0, 500) == 0
            other.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK,))
        assert await spool.prune_kept(100.0, 500) == 2
    finally:
        spool.close()


@pytest.mark.anyio
async def test_a_schema_3_spool_is_upgraded_and_its_events_are_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = SQLiteSpool(path)
    spool.open("exclusive")
    await spool.store([kept_event(1, None)])
    spool.close()
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP INDEX events_received; ALTER TABLE events DROP COLUMN received; "
        "UPDATE meta SET value = '3' WHERE key = 'schema_version';"
    )
    conn.close()
    spool = SQLiteSpool(path)
    spool.open("exclusive")
    try:
        ((did, event),) = due(spool)
        assert event == "e-1"
        await spool.settle(done=[did])
        assert (spool.depth, spool.count_kept(*EVERYTHING)) == (0, 0)
    finally:
        spool.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone() == (0,)
    finally:
        conn.close()
