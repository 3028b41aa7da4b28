"""Ordering keys in the spool, on SQLite and PostgreSQL (`spool_at`): `fetch_due` hands out only the first
pending delivery of each (output, key), nothing of a key whose first is handed out or waits for a retry, and
the next once the first is delivered or dead-lettered; unordered deliveries are handed out as ever. On
PostgreSQL the same holds between routers (leases, and the keys' advisory locks). The indexes the reads and
writes of keys use, and the schema upgrade that adds them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from event_router.core.spool import BLOCKED, DeadLetterFilter, NewDelivery, Refused, Requeue, Spool, StoreEvent
from event_router.core.spool.sqlite import SCHEMA_VERSION, SQLiteSpool
from event_router.testing import delivery_ids

pytestmark = pytest.mark.anyio


def event(i: int, *deliveries: tuple[str, str | None]) -> StoreEvent:
    """Event `i` with a delivery per (output, ordering key)."""
    body = b'{"id":"e%d","trigger":"t","source":"s","received_at":"x","data":{},"meta":{}}' % i
    return StoreEvent(f"e{i}", "t", body, [NewDelivery(o, "r", None, key) for o, key in deliveries])


@pytest.fixture
def spool(spool_at: Callable[[], Any]) -> Iterator[Any]:
    s = spool_at()
    s.open("exclusive")
    yield s
    s.close()


async def store(spool: Spool, *events: StoreEvent) -> list[int]:
    """Each event's first delivery id."""
    return [dids[0] for dids in delivery_ids(await spool.store(list(events)))]


def fetch(spool: Spool, output: str = "a", *, exclude: set[int] | None = None, later: float = 1.0) -> list[int]:
    return [row.did for row in spool.fetch_due(output, spool.clock.now() + later, 100, exclude or set())]


async def test_only_the_first_pending_delivery_of_a_key_is_handed_out(spool: Any) -> None:
    k1, k2, free, k1b, k1c = await store(
        spool, event(1, ("a", "k1")), event(2, ("a", "k2")), event(3, ("a", None)), event(4, ("a", "k1"))
    ) + await store(spool, event(5, ("a", "k1")))
    assert fetch(spool) == [k1, k2, free], "the second and third of k1 wait behind the first"
    assert fetch(spool, exclude={k1, k2, free}) == [], "nothing of a key whose first is in memory"
    rows = spool.fetch_due("a", spool.clock.now() + 1, 10, set())
    assert [(r.did, r.ordering_key) for r in rows] == [(k1, "k1"), (k2, "k2"), (free, None)]
    await spool.settle(done=[k1])
    assert fetch(spool, exclude={k2, free}) == [k1b], "the next of k1 once the first is delivered"
    await spool.settle(done=[k1b, k2, free])
    assert fetch(spool) == [k1c]
    await spool.settle(done=[k1c])
    assert fetch(spool) == [] and spool.depth == 0


async def test_a_key_waits_while_its_first_waits_for_a_retry(spool: Any) -> None:
    first, second = await store(spool, event(1, ("a", "k")), event(2, ("a", "k")))
    now = spool.clock.now()
    await spool.settle(retry=[(first, 1, now + 60, "503")])
    assert fetch(spool) == [], "the first waits for its retry, the second behind it"
    assert fetch(spool, later=120) == [first], "at its due time the first again, not the second"
    await spool.settle(retry=[(first, 2, now - 1, "503")])
    assert fetch(spool) == [first]
    await spool.settle(done=[first])
    assert fetch(spool) == [second]


async def test_a_dead_letter_lets_the_key_go_on_and_its_replay_comes_after_the_later_ones(spool: Any) -> None:
    first, second, third = await store(spool, *(event(i, ("a", "k")) for i in range(3)))
    (dlid,) = await spool.settle(dead=[(first, "permanent", "422", 1)])
    assert dlid is not None
    assert fetch(spool) == [second], "a dead letter does not hold its key: the next is due"
    (dead,) = spool.dead_letters(DeadLetterFilter())
    replayed = StoreEvent(dead.event_id or "", "t", dead.body, [NewDelivery("a", "r", dead.payload, "k")])
    spool.replay_dead_letters([Requeue(dlid, replayed)])
    await anyio.sleep(0)
    assert fetch(spool) == [second], "the replay waits behind what of its key is pending"
    await spool.settle(done=[second])
    assert fetch(spool) == [third]
    await spool.settle(done=[third])
    (again,) = fetch(spool)
    assert again > third, "the replayed delivery comes last, a new delivery of the key"
    await spool.settle(dead=[(again, "retries_exhausted", "503", 10)])
    assert fetch(spool) == [] and spool.depth == 0


async def test_keys_order_within_one_output_only(spool: Any) -> None:
    stored = delivery_ids(await spool.store([event(1, ("a", "k"), ("b", "k")), event(2, ("a", "k"), ("b", "k"))]))
    (a1, b1), (_, b2) = stored
    assert fetch(spool, "a") == [a1] and fetch(spool, "b") == [b1]
    await spool.settle(done=[b1])
    assert fetch(spool, "b") == [b2], "output b's key goes on whatever output a does"
    assert fetch(spool, "a") == [a1]


async def test_a_refused_delivery_is_a_dead_letter_and_the_event_goes_on(spool: Any) -> None:
    body = b'{"id":"e1","trigger":"t","source":"s","received_at":"x","data":{},"meta":{}}'
    item = StoreEvent(
        "e1",
        "t",
        body,
        [NewDelivery("a", "r", None, refused="ordering_key: data.peer is missing"), NewDelivery("b", "r", None)],
    )
    ((refused, did),) = await spool.store([item])
    assert isinstance(refused, Refused) and refused.error == "ordering_key: data.peer is missing"
    assert isinstance(did, int) and fetch(spool, "b") == [did] and fetch(spool, "a") == []
    (dead,) = spool.dead_letters(DeadLetterFilter())
    assert (dead.dlid, dead.output, dead.reason, dead.error) == (refused.dead_letter, "a", "permanent", refused.error)
    assert spool.dead_letter_count() == 1 and spool.depth == 1
    (only,) = await spool.store([StoreEvent("e2", "t", body, [item.deliveries[0]])])
    assert isinstance(only, list) and isinstance(only[0], Refused) and spool.depth == 1, "nothing pending of it"


async def test_the_order_survives_a_reopen(spool_at: Callable[[], Any]) -> None:
    s = spool_at()
    s.open("exclusive")
    try:
        first, second = await store(s, event(1, ("a", "k")), event(2, ("a", "k")))
    finally:
        s.close()
    s = spool_at()
    s.open("exclusive")
    try:
        assert fetch(s) == [first]
        await s.settle(done=[first])
        assert fetch(s) == [second]
    finally:
        s.close()


async def test_stores_sharing_a_commit_keep_their_order(spool: Any) -> None:
    """Many stores of one key queued at once: one group, several ops; the first of them is the only one due."""
    results: list[int] = []

    async def one(i: int) -> None:
        results.extend(await store(spool, event(i, ("a", "k"))))

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(one, i)
    dids = sorted(results)
    assert len(dids) == 30
    handed: list[int] = []
    while len(handed) < 30:
        (did,) = fetch(spool)
        handed.append(did)
        await spool.settle(done=[did])
    assert handed == dids, "one at a time, in the order the spool gave them ids"


def test_the_sqlite_reads_and_writes_of_keys_use_their_index(tmp_path: Path) -> None:
    """fetch_due reads the due index as before (blocked rows are never due, so never scanned); the look for a
    key's pending deliveries at store and the one that makes the next due at finish search `deliveries_key`."""
    from event_router.core.spool.sqlite import connect

    s = SQLiteSpool(tmp_path / "spool.db")
    s.open("exclusive")
    s.close()
    conn = connect(tmp_path / "spool.db")
    try:
        conn.execute("INSERT INTO events (seq, id, trigger, stored_at, body) VALUES (1, 'e', 't', 0, x'7b7d')")
        rows = [(1, "a", "r", float(i) if i % 50 == 0 else BLOCKED, 0.0, f"k{i % 50}") for i in range(20000)]
        conn.executemany(
            "INSERT INTO deliveries (seq, output, route, due, first_at, ordering_key) VALUES (?,?,?,?,?,?)", rows
        )
        conn.executemany(
            "INSERT INTO deliveries (seq, output, route, due, first_at) VALUES (?,?,?,?,?)",
            [(1, "a", "r", float(i), 0.0) for i in range(20000)],
        )
        conn.execute("ANALYZE")

        def plan(sql: str, *args: Any) -> str:
            return " / ".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args))

        fetch_plan = plan(
            "SELECT did FROM deliveries WHERE output = ? AND due <= ? ORDER BY due, did LIMIT ?", "a", 1.0, 10
        )
        assert "USING COVERING INDEX deliveries_due (output=? AND due<?)" in fetch_plan, fetch_plan
        pending = plan(
            "SELECT value FROM json_each(?) WHERE EXISTS "
            "(SELECT 1 FROM deliveries WHERE output = ? AND ordering_key = json_each.value)",
            '["k1"]',
            "a",
        )
        assert "SEARCH deliveries USING COVERING INDEX deliveries_key (output=? AND ordering_key=?)" in pending, pending
        unblock = plan(
            "UPDATE deliveries SET due = ? WHERE did = (SELECT MIN(did) FROM deliveries WHERE output = ? AND "
            "ordering_key = ?) AND due = ?",
            1.0,
            "a",
            "k1",
            BLOCKED,
        )
        assert "SEARCH deliveries USING INTEGER PRIMARY KEY" in unblock, unblock
        assert "SEARCH deliveries USING COVERING INDEX deliveries_key (output=? AND ordering_key=?)" in unblock, unblock
    finally:
        conn.close()


async def test_a_schema_5_sqlite_spool_gets_ordering_keys_in_place(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    s = SQLiteSpool(path)
    s.open("exclusive")
    try:
        (old,) = await store(s, event(1, ("a", None)))
    finally:
        s.close()
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP INDEX deliveries_key; ALTER TABLE deliveries DROP COLUMN ordering_key; "
        "UPDATE meta SET value = '5' WHERE key = 'schema_version';"
    )
    conn.close()
    s = SQLiteSpool(path)
    s.open("exclusive")
    try:
        assert s.depth == 1, "the pending delivery of schema 5 is kept, unordered"
        first, second = await store(s, event(2, ("a", "k")), event(3, ("a", "k")))
        assert fetch(s) == [old, first]
        await s.settle(done=[old, first])
        assert fetch(s) == [second]
    finally:
        s.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    finally:
        conn.close()


# --- PostgreSQL: several routers on one spool -------------------------------------------------------------


def _pg(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, args or None)
        return cur.fetchall() if cur.description else []


async def test_postgresql_a_key_whose_first_is_leased_by_one_router_gives_the_other_nothing(pg_dsn: str) -> None:
    from event_router.core.spool.postgresql import PostgreSQLSpool

    one, two = PostgreSQLSpool(pg_dsn, lease=1.0), PostgreSQLSpool(pg_dsn, lease=1.0)
    one.open("exclusive")
    two.open("exclusive")
    try:
        k1, k1b, k2, k2b = await store(one, event(1, ("a", "k1")), event(2, ("a", "k1")), event(3, ("a", "k2"))) + (
            await store(two, event(4, ("a", "k2")))
        )
        assert fetch(one) == [k1, k2], "one router leases the first of each key"
        assert fetch(two) == [], "the other gets nothing of those keys: their firsts are leased"
        await one.settle(done=[k1])
        assert fetch(two) == [k1b], "the next of k1 is due: the other router may take it"
        assert fetch(one, exclude={k2}) == [], "and then it is the other's"
        # one "dies" holding k2's first: nothing of k2 until its lease expires, then the survivor has it
        one._held.clear()
        one._held_keys.clear()
        one.close()
        _pg(pg_dsn, "UPDATE event_router.deliveries SET lease_owner = 'dead' WHERE did = %s", k2)
        assert fetch(two, exclude={k1b}) == []
        await anyio.sleep(1.2)
        assert fetch(two, exclude={k1b}) == [k2]
        await two.settle(done=[k1b, k2])
        assert fetch(two) == [k2b]
        await two.settle(done=[k2b])
        assert two.status().pending_events == 0
    finally:
        one.close()
        two.close()


async def test_postgresql_a_delivery_given_back_while_the_worker_still_holds_it_is_not_left_leased(
    pg_dsn: str,
) -> None:
    """A retry due at once, given back by `settle`: a fetch between its commit and the settle's return (the
    worker still holds the id, so it is excluded) must not leave it leased to this router once the settle
    has forgotten it (#18: it waited a whole lease, and its key with it). `fetch_due` leases nothing of what
    the worker holds that has an outcome committed, and the next fetch hands it out."""
    from event_router.core.spool.postgresql import PostgreSQLSpool
    from event_router.testing import wait_for

    s = PostgreSQLSpool(pg_dsn)
    s.open("exclusive")
    try:
        first, second = await store(s, event(1, ("a", "k")), event(2, ("a", "k")))
        assert fetch(s) == [first]
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: s.settle(retry=[(first, 1, s.clock.now() - 1, "503")]))
            await anyio.sleep(0)  # queued to the writer
            # the event loop held here: the settle cannot return before the fetch below
            sql = "SELECT lease_owner IS NULL FROM event_router.deliveries WHERE did = %s"
            wait_for(lambda: _pg(pg_dsn, sql, first) == [(True,)], what="the retry committed")
            assert fetch(s, exclude={first}) == [], "the worker still holds it"
        assert fetch(s) == [first], "handed out at the next fetch, not a lease later"
        await s.settle(done=[first])
        assert fetch(s) == [second]
    finally:
        s.close()


async def test_postgresql_a_group_run_again_on_a_new_connection_takes_its_key_locks_again(pg_dsn: str) -> None:
    """The writer's session ends while a group that finishes a keyed delivery holds the key's lock (its
    transaction waits on a row another session holds): the group runs again on a new connection, and that
    transaction takes the key's lock again before it finishes the delivery (the locks of the lost one went
    with it), so a store of the key by another router still waits for it."""
    import psycopg

    from event_router.core.spool.postgresql import KEY_LOCK_CLASS, PostgreSQLSpool, key_lock
    from event_router.testing import wait_for

    s = PostgreSQLSpool(pg_dsn)
    s.open("exclusive")
    blocker = psycopg.connect(pg_dsn)
    try:
        first, second = await store(s, event(1, ("a", "k")), event(2, ("a", "k")))
        assert fetch(s) == [first]
        blocker.execute("SELECT seq FROM event_router.events WHERE id = 'e1' FOR UPDATE")  # held, not committed
        waiting = (
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock' AND pid <> %s"
        )
        holds_key = (
            "SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory' AND classid = %s AND objid = %s "
            "AND objsubid = 2 AND granted"
        )
        lock = (KEY_LOCK_CLASS, key_lock("a", "k") & 0xFFFFFFFF)  # pg_locks shows the int4 keys as oids
        name = f"event-router {s.owner}"
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: s.settle(done=[first]))
            await anyio.sleep(0)  # queued to the writer
            wait_for(lambda: _pg(pg_dsn, waiting, name, 0) != [], what="the settle waiting on the event's row")
            ((pid,),) = _pg(pg_dsn, waiting, name, 0)
            assert _pg(pg_dsn, holds_key, pid, *lock) == [(1,)], "the key's lock taken before the finish"
            _pg(pg_dsn, "SELECT pg_terminate_backend(%s)", pid)
            wait_for(lambda: _pg(pg_dsn, waiting, name, pid) != [], what="the group run again on a new connection")
            ((again,),) = _pg(pg_dsn, waiting, name, pid)
            assert _pg(pg_dsn, holds_key, again, *lock) == [(1,)], "and the key's lock taken again"
            blocker.rollback()
        assert fetch(s) == [second], "finished once, and the next of its key due"
        assert s.status().pending_events == 1
    finally:
        blocker.close()
        s.close()


async def test_postgresql_routers_storing_and_finishing_one_key_at_once_leave_exactly_one_due(pg_dsn: str) -> None:
    """Two routers store deliveries of a few keys while each finishes the firsts it is handed, all at once: a
    store beside a finish of the same key must neither leave the key with nothing due (the new one stored
    behind a first that is gone) nor with two due. After every round, each key with pending deliveries has
    exactly one due: its lowest id."""
    from event_router.core.spool.postgresql import PostgreSQLSpool

    routers = [PostgreSQLSpool(pg_dsn), PostgreSQLSpool(pg_dsn)]
    for s in routers:
        s.open("exclusive")
    keys = [f"k{i}" for i in range(4)]
    finished: list[int] = []
    try:
        counter = iter(range(10_000))

        async def work(s: Any) -> None:
            for _ in range(25):
                await s.store([event(next(counter), ("a", keys[j % 4])) for j in range(3)])
                rows = s.fetch_due("a", s.clock.now() + 1, 10, set())
                if rows:
                    finished.extend(r.did for r in rows)
                    await s.settle(done=[r.did for r in rows])

        async with anyio.create_task_group() as tg:
            for s in routers:
                tg.start_soon(work, s)
        rows = _pg(
            pg_dsn,
            "SELECT ordering_key, count(*) FILTER (WHERE due < 'Infinity'), "
            "min(did) = min(did) FILTER (WHERE due < 'Infinity') FROM event_router.deliveries GROUP BY 1",
        )
        assert rows, "something is left pending to look at"
        for key, due, lowest in rows:
            assert due == 1 and lowest, f"key {key}: {due} due, lowest first {lowest}"
        assert len(finished) == len(set(finished)), "no delivery was handed out twice"
    finally:
        for s in routers:
            s.close()


def test_postgresql_reads_and_writes_of_keys_use_their_index_at_a_large_backlog(pg_dsn: str) -> None:
    """200,000 pending deliveries (half of them keyed, 1,000 keys), analysed: fetch_due's claim scans the due
    index, and the looks at a key (at store, at finish) search `deliveries_key`."""
    from event_router.core.spool.postgresql import _FINISH, PostgreSQLSpool

    s = PostgreSQLSpool(pg_dsn)
    s.open("exclusive")
    s.close()
    _pg(
        pg_dsn,
        "INSERT INTO event_router.events (id, trigger, stored_at, body) VALUES ('e', 't', 0, '\\x7b7d'::bytea)",
    )
    _pg(
        pg_dsn,
        "INSERT INTO event_router.deliveries (seq, output, route, due, first_at, ordering_key) "
        "SELECT 1, 'a', 'r', CASE WHEN i <= 1000 THEN i::float8 ELSE 'Infinity' END, 0, CASE WHEN i % 2 = 0 "
        "THEN NULL ELSE 'k' || (i % 1000) END FROM generate_series(1, 200000) AS i",
    )
    _pg(pg_dsn, "ANALYZE event_router.deliveries")

    def plan(sql: str, *args: Any) -> str:
        return "\n".join(row[0] for row in _pg(pg_dsn, "EXPLAIN " + sql, *args))

    claim = plan(
        "SELECT did FROM event_router.deliveries WHERE output = 'a' AND due <= 10 AND (lease_until IS NULL OR "
        "lease_until < clock_timestamp()) ORDER BY due, did LIMIT 10 FOR UPDATE SKIP LOCKED"
    )
    assert "Index Scan using deliveries_due" in claim, claim
    pending = plan(
        "SELECT u.o, u.k FROM unnest(ARRAY['a'], ARRAY['k1']) AS u(o, k) WHERE EXISTS "
        "(SELECT 1 FROM event_router.deliveries d WHERE d.output = u.o AND d.ordering_key = u.k)"
    )
    assert "deliveries_key" in pending, pending
    unblock = plan(
        "UPDATE event_router.deliveries d SET due = 1 FROM (SELECT (SELECT min(did) FROM event_router.deliveries x "
        "WHERE x.output = u.o AND x.ordering_key = u.k) AS head FROM unnest(ARRAY['a'], ARRAY['k1']) AS u(o, k)) h "
        "WHERE d.did = h.head AND d.due = 'Infinity'"
    )
    assert "deliveries_key" in unblock and "Index Scan using deliveries_pkey" in unblock, unblock
    # the finishing pass's statement makes each finished key's next due the same way
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True, options="-c search_path=event_router") as conn:
        rows = conn.execute("EXPLAIN " + _FINISH, ([1, 3], [1, 3], 5.0, BLOCKED)).fetchall()
    finish = "\n".join(row[0] for row in rows)
    unblocked = finish[finish.index("CTE unblocked") :]
    assert "deliveries_key" in unblocked and "Index Scan using deliveries_pkey" in unblocked, finish


async def test_postgresql_a_schema_4_spool_gets_ordering_keys_in_place(pg_dsn: str) -> None:
    from event_router.core.spool.postgresql import SCHEMA_VERSION as PG_SCHEMA_VERSION
    from event_router.core.spool.postgresql import PostgreSQLSpool

    s = PostgreSQLSpool(pg_dsn)
    s.open("exclusive")
    try:
        (old,) = await store(s, event(1, ("a", None)))
    finally:
        s.close()
    _pg(
        pg_dsn,
        "DROP INDEX event_router.deliveries_key; ALTER TABLE event_router.deliveries DROP COLUMN ordering_key; "
        "UPDATE event_router.meta SET value = '4' WHERE key = 'schema_version'",
    )
    with pytest.raises(Exception, match="older than this router's"):
        PostgreSQLSpool(pg_dsn).open("shared")
    s = PostgreSQLSpool(pg_dsn)
    s.open("exclusive")
    try:
        assert s.depth == 1
        first, second = await store(s, event(2, ("a", "k")), event(3, ("a", "k")))
        assert fetch(s) == [old, first]
        await s.settle(done=[old, first])
        assert fetch(s) == [second]
    finally:
        s.close()
    assert _pg(pg_dsn, "SELECT value FROM event_router.meta WHERE key = 'schema_version'") == [
        (str(PG_SCHEMA_VERSION),)
    ]
