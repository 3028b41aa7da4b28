"""The spool's record of source message ids (Standard Webhooks `webhook-id`) on each backend (a real SQLite
file, a scratch PostgreSQL database): a repeat is recognised in the same commit, in a later one and after a
reopen, and forgotten once it expires."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from event_router.core.spool import NewDelivery, Parked, Refused, SeenMessage, Spool, StoreDeadLetter, StoreEvent
from event_router.core.spool.sqlite import SQLiteSpool

pytestmark = pytest.mark.anyio


def event(i: int, message_id: str | None, *, input_name: str = "hook", expires_at: float | None = None) -> StoreEvent:
    body = b'{"id":"e%d","trigger":"t","source":"s","received_at":"x","data":{},"meta":{}}' % i
    seen = None
    if message_id is not None:
        seen = SeenMessage(input_name, message_id, time.time() + 300 if expires_at is None else expires_at)
    return StoreEvent(f"e{i}", "t", body, [NewDelivery("a", "r", None)], seen)


def seen_rows(spool: Any) -> list[tuple[str, str]]:
    """The message ids the spool's store holds, read beside it with the backend's own client."""
    if isinstance(spool, SQLiteSpool):
        conn = sqlite3.connect(spool.path)
        try:
            return sorted(conn.execute("SELECT input, message_id FROM seen_message_ids").fetchall())
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(spool.dsn) as pg:
        return sorted(pg.execute("SELECT input, message_id FROM event_router.seen_message_ids").fetchall())


async def test_a_message_id_is_stored_once(spool_at: Callable[[], Spool]) -> None:
    spool = spool_at()
    spool.open("exclusive")
    try:
        dead = StoreDeadLetter("validation", "bad", b"{}", seen=SeenMessage("hook", "x", time.time() + 300))
        first = await spool.store([event(1, "x"), event(2, "x"), event(3, "y"), dead, event(4, None)])
        assert isinstance(first[0], list) and first[1] is None and isinstance(first[2], list)
        assert first[3] is None, "a dead letter with an id already stored in the same commit is a repeat too"
        assert isinstance(first[4], list), "an event without a message id is always stored"
        assert spool.depth == 3
        later = await spool.store([event(5, "x"), event(6, "x", input_name="other")])
        assert later[0] is None, "a repeat of an id stored in an earlier commit"
        assert isinstance(later[1], list), "ids are per input"
        # copies submitted at once, each in its own store: whichever commit groups they share, one is stored
        results = await store_at_once([[event(10 + i, "z")] for i in range(20)], spool)
        assert sum(r != [None] for r in results) == 1
        assert spool.depth == 5
    finally:
        spool.close()
    reopened = spool_at()
    reopened.open("exclusive")
    try:
        repeat, new = await reopened.store([event(30, "x"), event(31, "w")])
        assert repeat is None, "the ids outlive the process"
        assert isinstance(new, list) and len(new) == 1
    finally:
        reopened.close()


async def store_at_once(
    batches: list[list[StoreEvent]], spool: Spool
) -> list[list[list[int | Parked | Refused] | int | None]]:
    results: list[list[list[int | Parked | Refused] | int | None]] = [[] for _ in batches]

    async def one(index: int) -> None:
        results[index] = await spool.store(batches[index])

    async with anyio.create_task_group() as tg:
        for index in range(len(batches)):
            tg.start_soon(one, index)
    return results


async def test_an_expired_id_is_forgotten(spool_at: Callable[[], Spool]) -> None:
    spool = spool_at()
    spool.open("exclusive")
    try:
        assert isinstance((await spool.store([event(1, "old", expires_at=time.time() - 1)]))[0], list)
        assert isinstance((await spool.store([event(2, "new")]))[0], list)
        assert seen_rows(spool) == [("hook", "new")], "a store prunes what expired"
        assert isinstance((await spool.store([event(3, "old")]))[0], list), "past its expiry an id is new"
    finally:
        spool.close()


async def test_a_spool_file_without_the_table_gets_it(tmp_path: Path) -> None:
    """SQLite only: its schema predates versioned migrations (PostgreSQL's starts with the table)."""
    path = tmp_path / "spool.db"
    spool = SQLiteSpool(path)
    spool.open("exclusive")
    ((did,),) = await spool.store([event(1, None)])  # type: ignore[misc]
    spool.close()
    conn = sqlite3.connect(path)  # as a router before the table existed left the file
    conn.executescript("DROP TABLE seen_message_ids")
    conn.close()
    spool = SQLiteSpool(path)
    spool.open("exclusive")
    try:
        assert spool.depth == 1
        assert [row.did for row in spool.fetch_due("a", time.time() + 1, 10, set())] == [did]
        assert isinstance((await spool.store([event(2, "x")]))[0], list)
        assert (await spool.store([event(3, "x")]))[0] is None
    finally:
        spool.close()
