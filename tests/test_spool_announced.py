"""What each stored event announced, on a real spool of each backend: a live event's key is kept in its own
commit, a recovered event (a claim) is stored only when no event announced the same, keys expire, and a
spool of the schema before is upgraded in place with its rows. On PostgreSQL, two routers claiming the same
keys at once store each once."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from event_router.core.announced import announced_key, announced_text, key_cutoff
from event_router.core.spool import Announcement, NewDelivery, Parked, Refused, Spool, StoreDeadLetter, StoreEvent
from event_router.core.spool.sqlite import SCHEMA_VERSION, SQLiteSpool

pytestmark = pytest.mark.anyio


def event(i: int, key: bytes | None, *, claim: bool = False) -> StoreEvent:
    body = b'{"id":"e%d","trigger":"t","source":"s","received_at":"x","data":{},"meta":{}}' % i
    announced = None if key is None else Announcement(key, claim)
    return StoreEvent(f"e{i}", "t", body, [NewDelivery("a", "r", None)], announced=announced)


def key(text: str, created: str = "2026-08-20T10:00:00.000Z") -> bytes:
    found = announced_key("transport.messageReceived", {"id": text, "createdAt": created})
    assert found is not None
    return found


async def test_a_claim_is_stored_only_when_nothing_announced_it(spool_at: Callable[[], Spool]) -> None:
    spool = spool_at()
    spool.open("exclusive")
    try:
        live = await spool.store([event(1, key("A")), event(2, key("A")), event(3, None)])
        assert all(isinstance(r, list) and r for r in live), "live events are stored whatever their key"
        claims = await spool.store(
            [event(4, key("A"), claim=True), event(5, key("B"), claim=True), event(6, key("B"), claim=True)]
        )
        assert claims[0] is None, "announced live before"
        assert isinstance(claims[1], list) and claims[1], "nothing announced B"
        assert claims[2] is None, "B was claimed by an earlier item of the same store"
        dead = StoreDeadLetter("validation", "bad", b"{}", announced=Announcement(key("C"), claim=True))
        assert isinstance((await spool.store([dead]))[0], int)
        assert (await spool.store([event(7, key("C"), claim=True)]))[0] is None, "a dead letter announced it too"
        # copies at once, each in its own store: whichever groups they share, one is stored
        results = await _at_once(spool, [[event(10 + i, key("Z"), claim=True)] for i in range(20)])
        assert sum(r != [None] for r in results) == 1
        old = key("old", "2026-08-19T23:59:59.999Z")
        assert isinstance((await spool.store([event(40, old)]))[0], list)
        assert await spool.forget_announced(key_cutoff("2026-08-20T00:00:00")) == 1, "only the key before the cutoff"
        assert isinstance((await spool.store([event(41, old, claim=True)]))[0], list), "a forgotten key is gone"
    finally:
        spool.close()
    reopened = spool_at()
    reopened.open("exclusive")
    try:
        assert (await reopened.store([event(50, key("A"), claim=True)]))[0] is None, "keys outlive the process"
    finally:
        reopened.close()


async def test_announced_reads_which_keys_are_kept(spool_at: Callable[[], Spool]) -> None:
    """The read gap recovery makes before settling: the kept keys among many (more than one statement's
    worth), those forgotten or never kept left out, and nothing for an empty batch."""
    spool = spool_at()
    spool.open("exclusive")
    try:
        kept = [key(f"K{i}") for i in range(1000)]
        await spool.store([event(i, k) for i, k in enumerate(kept)])
        old = key("old", "2026-08-19T23:59:59.999Z")
        await spool.store([event(2000, old)])
        assert await spool.forget_announced(key_cutoff("2026-08-20T00:00:00")) == 1
        asked = [*kept[::2], old, key("never"), *kept[1::2]]
        assert await spool.announced(asked) == set(kept)
        assert await spool.announced([]) == set()
    finally:
        spool.close()


async def _at_once(
    spool: Spool, batches: list[list[StoreEvent]]
) -> list[list[list[int | Parked | Refused] | int | None]]:
    results: list[list[list[int | Parked | Refused] | int | None]] = [[] for _ in batches]

    async def one(index: int) -> None:
        results[index] = await spool.store(batches[index])

    async with anyio.create_task_group() as tg:
        for index in range(len(batches)):
            tg.start_soon(one, index)
    return results


async def test_a_schema_2_spool_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = SQLiteSpool(path)
    spool.open("exclusive")
    try:
        await spool.store([event(1, None)])
    finally:
        spool.close()
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE announced; UPDATE meta SET value = '2' WHERE key = 'schema_version';")
    conn.close()
    again = SQLiteSpool(path)
    again.open("exclusive")
    try:
        assert again.depth == 1, "the pending event of schema 2 is kept"
        assert (await again.store([event(2, key("A"))]))[0]
        assert (await again.store([event(3, key("A"), claim=True)]))[0] is None
    finally:
        again.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    finally:
        conn.close()


def _pg_execute(dsn: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


async def test_postgresql_a_schema_1_spool_is_upgraded_in_place(pg_dsn: str) -> None:
    from event_router.core.spool.postgresql import SCHEMA_VERSION as PG_SCHEMA_VERSION
    from event_router.core.spool.postgresql import PostgreSQLSpool

    spool = PostgreSQLSpool(pg_dsn)
    spool.open("exclusive")
    try:
        await spool.store([event(1, None)])
    finally:
        spool.close()
    _pg_execute(
        pg_dsn,
        "DROP TABLE event_router.announced; UPDATE event_router.meta SET value = '1' WHERE key = 'schema_version'",
    )
    with pytest.raises(Exception, match="older than this router's"):
        PostgreSQLSpool(pg_dsn).open("shared")
    again = PostgreSQLSpool(pg_dsn)
    again.open("exclusive")
    try:
        assert again.depth == 1, "the pending event of schema 1 is kept"
        assert (await again.store([event(2, key("A"))]))[0]
        assert (await again.store([event(3, key("A"), claim=True)]))[0] is None
    finally:
        again.close()
    import psycopg

    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT value FROM event_router.meta WHERE key = 'schema_version'").fetchall()
    assert rows == [(str(PG_SCHEMA_VERSION),)]


async def test_postgresql_two_routers_claiming_the_same_changes_store_each_once(pg_dsn: str) -> None:
    """Every router runs the same recovery input, so two rebuild the same lost changes at about the same
    time: each change is stored by one of them. Keys claimed in opposite orders, and one router's live
    events announcing what the other claims, never fail a store (a deadlock's group runs again)."""
    from event_router.core.spool.postgresql import PostgreSQLSpool

    one, two = PostgreSQLSpool(pg_dsn), PostgreSQLSpool(pg_dsn)
    one.open("exclusive")
    two.open("exclusive")
    try:
        for round_ in range(30):
            keys = [key(f"r{round_}-{k}") for k in range(8)]
            # per router: the claims in one store call each, so a group holds several insert statements
            ones = [one.store([event(100 + k, keys[k], claim=True)]) for k in range(8)]
            twos = [two.store([event(200 + k, keys[7 - k], claim=True)]) for k in range(8)]
            stores = await asyncio.gather(*ones, *twos)
            stored = [r for batch in stores for r in batch if r is not None]
            assert len(stored) == 8, stores
        for round_ in range(30):
            keys = [key(f"live{round_}-{k}") for k in range(8)]
            lives = one.store([event(300 + k, keys[k]) for k in range(8)])
            claims = [two.store([event(400 + k, keys[7 - k], claim=True)]) for k in range(8)]
            live, *claimed = await asyncio.gather(lives, *claims)
            assert all(isinstance(r, list) and r for r in live), "live events are stored whatever their key"
            # a claim that ran before the live events' commit is stored too (gap recovery's settle keeps
            # that from happening); one after it is a repeat
            assert all(batch[0] is None or isinstance(batch[0], list) for batch in claimed)
        late = await two.store([event(500, key("live0-3"), claim=True)])
        assert late == [None], "the other router's live event announced it"
        assert await two.forget_announced(key_cutoff("2026-08-21T00:00:00")) > 0
        assert await one.forget_announced(key_cutoff("2026-08-21T00:00:00")) == 0, "forgotten by the other"
    finally:
        one.close()
        two.close()


def test_keys_name_the_state_an_event_reports() -> None:
    when = "2026-08-20T10:00:00.000Z"
    request = {"id": "REQ00000000000000001", "status": "Open", "createdAt": when}
    assert announced_text("consumption.incomingRequestReceived", request) == (
        when,
        "consumption.incomingRequestReceived\x1fREQ00000000000000001\x1f",
    ), "a received request's key ignores its status: recovery finds it later in another one"
    changed = {"request": request, "oldStatus": "Open", "newStatus": "Decided"}
    assert announced_text("consumption.incomingRequestStatusChanged", changed) != announced_text(
        "consumption.incomingRequestStatusChanged", {**changed, "newStatus": "Completed"}
    )
    relationship = {"id": "REL00000000000000001", "auditLog": [{"createdAt": "a"}, {"createdAt": when}]}
    assert announced_text("transport.relationshipChanged", relationship) == (
        when,
        "transport.relationshipChanged\x1fREL00000000000000001\x1f2",
    )
    # a peer's deletion: its own state, dated by deletionDate (it adds no audit-log entry), and it does not
    # change the relationship's own key
    leaving = {**relationship, "peerDeletionInfo": {"deletionStatus": "ToBeDeleted", "deletionDate": "2027-01-01"}}
    assert announced_text("transport.peerToBeDeleted", leaving) == (
        "2027-01-01",
        "transport.peerToBeDeleted\x1fREL00000000000000001\x1fToBeDeleted",
    )
    assert announced_text("transport.relationshipChanged", leaving) == announced_text(
        "transport.relationshipChanged", relationship
    )
    assert announced_text("transport.messageWasReadAtChanged", {"id": "MSG", "createdAt": when}) is None
    assert announced_text("runtime.modulesStarted", None) is None
    assert announced_text("router.actionSucceeded", {"action": "sync"}) is None
