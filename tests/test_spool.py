"""The spool on a real SQLite file and a real PostgreSQL database (the `spool` and `spool_at` fixtures run
each test on both backends): what is stored survives a reopen, group commit batches writes. The tests of
SQLite's own files and pragmas take `sqlite_spool`."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from event_router.api.errors import SpoolError
from event_router.core.spool import DeadLetterFilter, NewDelivery, Spool, StoreDeadLetter, StoreEvent
from event_router.core.spool.sqlite import SQLiteSpool
from event_router.testing import delivery_ids

pytestmark = pytest.mark.anyio


def event(i: int, outputs: tuple[str, ...] = ("a",)) -> StoreEvent:
    body = b'{"id":"e%d","trigger":"t","source":"s","received_at":"x","data":{},"meta":{}}' % i
    return StoreEvent(f"e{i}", "t", body, [NewDelivery(o, "r", None) for o in outputs])


@pytest.fixture
def spool(spool_at: Callable[[], Any]) -> Iterator[Any]:
    """The daemon's spool, on each backend (its writer's attributes, `_write`, `commits`, are the same)."""
    s = spool_at()
    s.open("exclusive")
    yield s
    s.close()


@pytest.fixture
def sqlite_spool(tmp_path: Path) -> Iterator[SQLiteSpool]:
    s = SQLiteSpool(tmp_path / "spool.db")
    s.open("exclusive")
    yield s
    s.close()


async def test_store_fetch_complete(spool: Any) -> None:
    (dids,) = await spool.store([event(1, ("a", "b"))])
    assert isinstance(dids, list) and len(dids) == 2
    assert spool.depth == 1
    rows = spool.fetch_due("a", time.time() + 1, 10, set())
    assert [r.did for r in rows] == [dids[0]]
    await spool.settle(done=[dids[0]])
    assert spool.depth == 1, "event stays while output b has not delivered"
    await spool.settle(done=[dids[1]])
    assert spool.depth == 0
    assert spool.fetch_due("b", time.time() + 1, 10, set()) == []


async def test_fetch_excludes_claimed_and_not_yet_due(spool: Any) -> None:
    stored = await spool.store([event(i) for i in range(5)])
    dids = [d[0] for d in delivery_ids(stored)]
    now = time.time() + 1
    await spool.settle(retry=[(dids[0], 1, now + 60, "boom")])
    rows = spool.fetch_due("a", now, 10, {dids[1]})
    assert [r.did for r in rows] == dids[2:]
    later = spool.fetch_due("a", now + 120, 10, set())
    assert later[-1].did == dids[0] and later[-1].attempts == 1


def wait_for_commit(spool: Any, commits: int) -> None:
    """Block the event loop until the spool's writer committed again: a settle's outcome is then in the
    store, and the task awaiting it has not been resumed (nothing else runs on the loop meanwhile)."""
    deadline = time.monotonic() + 10
    while spool.commits <= commits:
        assert time.monotonic() < deadline, "the writer did not commit"
        time.sleep(0.001)


async def test_a_retry_fetched_before_its_settle_returns_is_handed_out_next_time(spool: Any) -> None:
    """A delivery given back as a retry due at once, which a worker's fetch comes upon between the retry's
    commit and the settle's return (the worker still holds it: excluded), is handed out by the next fetch
    once the worker let it go.

    #18: on PostgreSQL that fetch leased the delivery to this router and the settle's return then forgot the
    lease, so it was neither renewed nor given back: no fetch handed it out until the lease ran out (30 s),
    and `dlq replay`'s deliveries stayed pending that long under load."""
    ((did,),) = await spool.store([event(1)])
    now = spool.clock.now() + 1
    assert [r.did for r in spool.fetch_due("a", now, 10, set())] == [did]
    commits = spool.commits
    settling = asyncio.create_task(spool.settle(retry=[(did, 1, now - 1, "503")]))
    await asyncio.sleep(0)  # the settle is queued to the writer; the loop runs nothing else until awaited
    wait_for_commit(spool, commits)
    assert spool.fetch_due("a", now, 10, {did}) == [], "the worker holds it until its settle returns"
    await settling
    rows = spool.fetch_due("a", now, 10, set())
    assert [(r.did, r.attempts) for r in rows] == [(did, 1)], "let go by the worker: handed out again"


async def test_dead_letter_keeps_event_and_reason(spool: Any) -> None:
    ((did,),) = await spool.store([event(7)])
    (dlid,) = await spool.settle(dead=[(did, "permanent", "400 bad request", 1)])
    assert spool.depth == 0

    (dl,) = spool.dead_letters(DeadLetterFilter(ids=[dlid]))
    assert (dl.event_id, dl.output, dl.reason, dl.error, dl.attempts, dl.source) == (
        "e7",
        "a",
        "permanent",
        "400 bad request",
        1,
        "s",
    )


async def test_dead_letter_items_and_reopen(spool_at: Callable[[], Spool]) -> None:
    s = spool_at()
    s.open("exclusive")
    result = await s.store([StoreDeadLetter(reason="validation", error="data.id: missing", body=b"{}"), event(1)])
    assert isinstance(result[0], int)
    s.close()
    again = spool_at()
    again.open("exclusive")
    try:
        assert again.depth == 1
        assert len(again.fetch_due("a", time.time() + 1, 10, set())) == 1
    finally:
        again.close()


async def test_concurrent_stores_share_commits(spool: Any) -> None:
    async def one(i: int) -> None:
        await spool.store([event(i)])

    before = spool.commits
    async with anyio.create_task_group() as tg:
        for i in range(500):
            tg.start_soon(one, i)
    assert spool.depth == 500
    assert spool.commits - before < 500, "group commit should merge concurrent writes"


async def test_lazy_outcomes_ride_along_with_the_next_store(spool: Any) -> None:
    stored = await spool.store([event(i) for i in range(3)])
    dids = [d[0] for d in delivery_ids(stored)]
    spool.LAZY_DELAY = 5.0  # long enough that only the store below can end the wait
    before = spool.commits
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: spool.settle(done=dids, lazy=True))
        await anyio.sleep(0.05)
        assert spool.depth == 3, "a lazy outcome waits for company"
        with anyio.fail_after(2):
            await spool.store([event(9)])
    assert spool.commits == before + 1, "the outcome and the store shared one commit"
    assert spool.depth == 1


async def test_lazy_outcome_alone_commits_after_the_delay(spool: Any) -> None:
    ((did,),) = await spool.store([event(1)])
    spool.LAZY_DELAY = 0.2
    started = time.monotonic()
    await spool.settle(done=[did], lazy=True)
    assert 0.15 <= time.monotonic() - started < 2
    assert spool.depth == 0


async def test_failed_commit_reports_every_op(spool: Any) -> None:
    def broken(conn: Any) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(SpoolError, match="spool write failed"):
        await spool._write(broken)
    assert spool.depth == 0
    await spool.store([event(1)])  # the writer survives a failed group
    assert spool.depth == 1


async def test_closed_spool_refuses_writes(spool_at: Callable[[], Spool]) -> None:
    s = spool_at()
    s.open("exclusive")
    s.close()
    with pytest.raises(SpoolError, match="closed"):
        await s.store([event(1)])


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    s = SQLiteSpool(tmp_path / "spool.db")
    s.open("exclusive")
    s.close()
    conn = sqlite3.connect(tmp_path / "spool.db")
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(SpoolError, match="newer router"):
        SQLiteSpool(tmp_path / "spool.db").open()


async def test_spool_files_are_private(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)  # a permissive umask, as outside systemd
    try:
        s = SQLiteSpool(tmp_path / "data" / "spool.db")
        s.open("exclusive")
        await s.store([event(1)])
        s.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "data" / "spool.db").stat().st_mode) == 0o600


async def test_ids_of_a_bulk_store_are_the_rows_stored(spool: Any) -> None:
    """Events and deliveries go in with one multi-row INSERT each: the ids handed back must be the rows'
    own, with gaps left by earlier deletions, dead letters mixed in, and more rows than one INSERT takes."""
    first = await spool.store([event(i, ("a", "b")) for i in range(5)])
    await spool.settle(done=[d for dids in first[1:4] for d in dids])
    outputs = [("a",), ("a", "b", "c"), (), ("b",)]
    items: list[StoreEvent | StoreDeadLetter] = [event(100 + i, outputs[i % 4]) for i in range(450)]
    items.insert(7, StoreDeadLetter("validation", "bad", b"{}", "dl", "t", "s"))
    stored = await spool.store(items)
    now = spool.clock.now()
    pending = {row.did: (row.event_id, row.output) for out in "abc" for row in spool.fetch_due(out, now, 10_000, ())}
    for item, ids in zip(items, stored, strict=True):
        if isinstance(item, StoreDeadLetter):
            assert isinstance(ids, int)
            assert [dl.event_id for dl in spool.dead_letters(DeadLetterFilter(ids=[ids]))] == ["dl"]
            continue
        (dids,) = delivery_ids([ids])
        assert [pending[did] for did in dids] == [(item.event_id, d.output) for d in item.deliveries]
    # an event without deliveries is not kept: it is not pending (PENDING_EVENTS)
    assert spool.depth == 2 + sum(1 for i in range(450) if outputs[i % 4])


# --- one op's failure, transient failures, another process's rows ------------------------------------------


async def test_a_settle_of_a_delivery_gone_does_not_fail_the_store_beside_it(spool: Any) -> None:
    """A replaced worker's late outcome for a row its successor already finished is queued beside a store:
    the store commits, and the outcome finds nothing to move."""
    poisoned = asyncio.ensure_future(spool.settle(dead=[(999, "permanent", "400", 1)], lazy=True))
    await asyncio.sleep(0)  # queued first: the store joins its group
    stored = await spool.store([event(1)])
    assert isinstance(stored[0], list) and len(stored[0]) == 1
    assert await poisoned == [None]
    assert spool.depth == 1 and spool.dead_letter_count() == 0 and spool.last_error is None


async def test_an_op_that_fails_alone_fails_no_other_writers_store(spool: Any) -> None:
    """An op that can never commit fails alone, not transient; the stores that shared its group commit."""
    poisoned = asyncio.ensure_future(
        spool._write(lambda conn: conn.execute("INSERT INTO nowhere VALUES (1)"), lazy=True)
    )
    await asyncio.sleep(0)
    stores = [asyncio.ensure_future(spool.store([event(i)])) for i in range(3)]
    results = await asyncio.gather(*stores)
    assert all(isinstance(r[0], list) for r in results), results
    with pytest.raises(SpoolError, match=r'no such table: nowhere|relation "nowhere" does not exist') as raised:
        await poisoned
    assert raised.value.transient is False
    assert spool.depth == 3 and spool.writable


async def test_outcomes_settled_one_by_one_in_one_group_each_finish_theirs(spool: Any) -> None:
    """An output delivering one event at a time settles each delivery alone: one group holds many such settles
    (PostgreSQL forgets their deliveries together before the commit), and beside them an op that fails, so the
    group runs again op by op. Every delivery is forgotten once, each event with its last one, the counts too."""
    stored = delivery_ids(await spool.store([event(i, ("a", "b")) for i in range(40)]))
    spool.LAZY_DELAY = 5.0  # the lazy settles wait for company: only the store below ends the group
    done = [a for a, _ in stored] + [b for _, b in stored[:20]]
    settles = [asyncio.ensure_future(spool.settle(done=[did], lazy=True)) for did in done]
    poisoned = asyncio.ensure_future(
        spool._write(lambda conn: conn.execute("INSERT INTO nowhere VALUES (1)"), lazy=True)
    )
    await asyncio.sleep(0)
    commits = spool.commits
    with anyio.fail_after(10):
        ((new,),) = delivery_ids(await spool.store([event(99)]))
        assert await asyncio.gather(*settles) == [[]] * len(done)
    with pytest.raises(SpoolError):
        await poisoned
    assert spool.commits - commits == len(done) + 1, "the failed group ran again op by op"
    assert spool.depth == 21, "events 20-39 wait for output b, event 99 for a"
    assert spool.pending_outputs() == {"a": 1, "b": 20}
    now = time.time() + 1
    assert [r.did for r in spool.fetch_due("a", now, 100, set())] == [new]
    assert [r.did for r in spool.fetch_due("b", now, 100, set())] == [b for _, b in stored[20:]]


async def test_a_full_disk_is_a_transient_failure(sqlite_spool: SQLiteSpool) -> None:
    """SQLITE_FULL (here: the file may not grow) fails the write with `transient` set: the same write can
    succeed once there is room, and an output worker tries its outcome commit again."""
    pages = await sqlite_spool._write(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
    await sqlite_spool._write(lambda conn: conn.execute(f"PRAGMA max_page_count = {pages}"))
    big = StoreEvent("big", "t", b'{"x":"' + b"a" * 200_000 + b'"}', [NewDelivery("a", "r", None)])
    with pytest.raises(SpoolError, match="full") as raised:
        await sqlite_spool.store([big])
    assert raised.value.transient is True
    await sqlite_spool._write(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823"))
    assert isinstance((await sqlite_spool.store([big]))[0], list)


def _insert_as_another_process(path: Path, count: int, now: float) -> None:
    """What a `dlq replay` commits: events and deliveries the router has not counted."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        for i in range(count):
            seq = other.execute(
                "INSERT INTO events (id, trigger, stored_at, body) VALUES (?, 't', ?, '{}')", (f"r{i}", now)
            ).lastrowid
            other.execute(
                "INSERT INTO deliveries (seq, output, route, due, first_at) VALUES (?, 'a', 'r', ?, ?)", (seq, now, now)
            )
    finally:
        other.close()


@pytest.mark.parametrize("own", [1, 3])
async def test_finishing_another_processs_rows_before_they_are_counted(sqlite_spool: SQLiteSpool, own: int) -> None:
    """The router finishes rows a replay added while its count of them is put off (RECOUNT_SHARE): the
    counts never go below zero, and the next look counts them again (no lasting undercount that would let
    max_pending_events admit more)."""
    await sqlite_spool.store([event(i) for i in range(own)])
    sqlite_spool._next_count = time.monotonic() + 60  # as just after the count of a large backlog
    _insert_as_another_process(sqlite_spool.path, 3, sqlite_spool.clock.now())
    foreign = [
        r.did
        for r in sqlite_spool.fetch_due("a", sqlite_spool.clock.now() + 1, 100, ())
        if not r.event_id.startswith("e")
    ]
    assert len(foreign) == 3
    seen: list[tuple[int, dict[str, int]]] = []
    sqlite_spool._next_look = 0.0  # this group looks: it sees the other process's commit, and defers the count
    await sqlite_spool.settle(done=foreign[:2])
    seen.append((sqlite_spool.depth, sqlite_spool.pending_outputs()))
    sqlite_spool._next_look = 0.0
    await sqlite_spool.store([event(100)])
    seen.append((sqlite_spool.depth, sqlite_spool.pending_outputs()))
    assert all(depth >= 0 and all(n >= 0 for n in pending.values()) for depth, pending in seen), seen
    assert seen[-1] == (own + 1 + 1, {"a": own + 1 + 1}), seen


async def test_counts_never_go_below_zero_without_a_look(sqlite_spool: SQLiteSpool) -> None:
    """The same without a look in between (the other process's commit unseen): a decrement below zero
    clamps at zero and makes the next look count."""
    await sqlite_spool.store([event(0)])
    sqlite_spool._next_count = time.monotonic() + 60
    sqlite_spool._next_look = time.monotonic() + 60
    _insert_as_another_process(sqlite_spool.path, 3, sqlite_spool.clock.now())
    rows = sqlite_spool.fetch_due("a", sqlite_spool.clock.now() + 1, 100, ())
    await sqlite_spool.settle(done=[r.did for r in rows if r.event_id != "e0"])
    assert sqlite_spool.depth >= 0 and sqlite_spool.counts.pending.get("a", 0) >= 0
    sqlite_spool._next_look = 0.0
    await sqlite_spool.store([event(1)])
    assert (sqlite_spool.depth, sqlite_spool.pending_outputs()) == (2, {"a": 2})


async def test_message_ids_are_claimed_without_returning(sqlite_spool: SQLiteSpool) -> None:
    """`INSERT ... RETURNING` needs SQLite 3.35: repeats are found with statements older SQLite runs."""
    from event_router.core.spool import SeenMessage

    statements: list[str] = []
    await sqlite_spool._write(lambda conn: conn.set_trace_callback(statements.append))
    later = time.time() + 3600

    def seen(i: int, message: str) -> StoreEvent:
        return StoreEvent(f"e{i}", "t", b"{}", [NewDelivery("a", "r", None)], SeenMessage("hook", message, later))

    first = await sqlite_spool.store([seen(1, "m1"), seen(2, "m2"), seen(3, "m1")])
    second = await sqlite_spool.store([seen(4, "m2"), seen(5, "m3")])
    await sqlite_spool._write(lambda conn: conn.set_trace_callback(None))
    assert [r is None for r in first] == [False, False, True]
    assert [r is None for r in second] == [True, False]
    assert statements and not any("RETURNING" in s.upper() for s in statements), statements


def test_a_readonly_spool_creates_nothing_and_writes_nothing(tmp_path: Path) -> None:
    """`status` opens the spool to read only: where there is none it makes none, and it refuses writes."""
    missing = SQLiteSpool(tmp_path / "none" / "spool.db")
    with pytest.raises(SpoolError, match="cannot open spool"):
        missing.open("readonly")
    assert not (tmp_path / "none").exists()

    path = tmp_path / "spool.db"
    writer = SQLiteSpool(path)
    writer.open("exclusive")
    try:
        anyio.run(writer.store, [StoreDeadLetter("validation", "bad", b"{}", "dl", "t", "s")])
        reader = SQLiteSpool(path)
        reader.open("readonly")
        try:
            assert [dl.event_id for dl in reader.dead_letters(DeadLetterFilter())] == ["dl"]
            assert reader.status().dead_letters[0].count == 1
            with pytest.raises(SpoolError, match="reading only"):
                reader.purge_dead_letters(DeadLetterFilter())
        finally:
            reader.close()
        assert writer.count_dead_letters(DeadLetterFilter()) == (1, 1)
    finally:
        writer.close()


async def test_a_failed_read_is_a_spool_error(sqlite_spool: SQLiteSpool) -> None:
    """The pipeline and the inputs' batching know only SpoolError: no sqlite3 exception leaves the sqlite_spool."""
    other = sqlite3.connect(sqlite_spool.path)
    other.execute("DROP TABLE seen_message_ids")
    other.commit()
    other.close()
    from event_router.core.spool import SeenMessage

    with pytest.raises(SpoolError, match="spool read failed: no such table") as failed:
        sqlite_spool.known_messages([SeenMessage("hook", "m1", time.time() + 60)])
    assert not failed.value.transient


async def test_the_routers_own_purge_and_replay_are_counted_at_once(spool: Any) -> None:
    from event_router.core.spool import Requeue, StillDead

    ((did,),) = await spool.store([event(1)])
    dlids = await spool.settle(dead=[(did, "permanent", "400", 1)])
    await spool.store([StoreDeadLetter("validation", "bad", b"{}", "dl", "t", "s")] * 2)
    assert (spool.dead_letter_count(), spool.depth) == (3, 0)
    (first,) = spool.dead_letters(DeadLetterFilter(ids=[d for d in dlids if d is not None]))
    spool.replay_dead_letters([Requeue(first.dlid, event(1)), StillDead(first.dlid + 1, "still bad")])
    assert (spool.dead_letter_count(), spool.depth, spool.pending_outputs()) == (2, 1, {"a": 1})
    (again,) = spool.dead_letters(DeadLetterFilter(ids=[first.dlid + 1]))
    assert (again.error, again.attempts) == ("still bad", 1)
    assert spool.purge_dead_letters(DeadLetterFilter(reason="validation")) == 2
    assert spool.dead_letter_count() == 0


async def test_stored_events_with_pending_deliveries_and_dead_letters_of_one_event(
    spool_at: Callable[[], Any],
) -> None:
    """The console's look at one event: its stored rows with their pending deliveries (the failed one with
    its attempts and error), and its dead letters, by event id, read beside the router on a reader of its own."""
    spool = spool_at()
    spool.open("exclusive")
    reader = spool_at()
    try:
        ((a, b), _) = delivery_ids(await spool.store([event(1, ("a", "b")), event(2)]))
        now = spool.clock.now()
        await spool.settle(retry=[(a, 2, now + 60, "503 from a")])
        (dlid,) = await spool.settle(dead=[(b, "permanent", "400 from b", 1)])
        reader.open("readonly")
        (stored,) = reader.stored_events("e1")
        assert (stored.event_id, stored.trigger, stored.received) == ("e1", "t", None)
        assert stored.body == event(1).body
        (pending,) = stored.deliveries
        assert (pending.did, pending.output, pending.attempts, pending.last_error) == (a, "a", 2, "503 from a")
        assert 50 < pending.due_in <= 60
        assert reader.stored_events("nope") == []
        (dead,) = reader.dead_letters(DeadLetterFilter(event_id="e1"))
        assert (dead.dlid, dead.output, dead.error) == (dlid, "b", "400 from b")
        assert reader.dead_letters(DeadLetterFilter(event_id="e2")) == []
    finally:
        reader.close()
        spool.close()


async def test_retry_now_makes_an_outputs_waiting_retries_due(spool_at: Callable[[], Any]) -> None:
    """`retry_now` (the console's "retry now", from an operator's spool beside the router): the output's
    deliveries waiting for a retry are due at once; its first attempts and other outputs' retries keep theirs."""
    spool = spool_at()
    spool.open("exclusive")
    operator = spool_at()
    try:
        stored = await spool.store([event(1, ("a", "b")), event(2, ("a",)), event(3, ("a",))])
        (a1, b1), (a2,), (a3,) = delivery_ids(stored)
        now = spool.clock.now()
        await spool.settle(retry=[(a1, 1, now + 300, "503"), (a2, 4, now + 600, "503"), (b1, 1, now + 300, "503")])
        assert {r.did for r in spool.fetch_due("a", now + 1, 10, set())} == {a3}
        operator.open("shared")
        assert operator.retry_now("a") == 2
        assert operator.retry_now("a") == 0, "due already"
        due = spool.fetch_due("a", spool.clock.now() + 0.5, 10, set())
        assert {(r.did, r.attempts) for r in due} == {(a1, 1), (a2, 4), (a3, 0)}
        assert spool.fetch_due("b", spool.clock.now() + 0.5, 10, set()) == [], "another output's retry waits"
    finally:
        operator.close()
        spool.close()


def test_only_the_sqlite_backend_imports_sqlite3() -> None:
    """The rest of the router calls the spool's interface (event_router.core.spool), so that another
    backend replaces one module: no other module of the package talks to SQLite."""
    import re

    import event_router

    package = Path(event_router.__file__).parent
    users = sorted(
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if re.search(r"^\s*(import|from) sqlite3\b", path.read_text(encoding="utf-8"), re.MULTILINE)
    )
    assert users == ["core/spool/sqlite.py"]


# --- PostgreSQL: schema versions, several routers on one database --------------------------------------


def _pg_execute(dsn: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


def test_postgresql_newer_schema_is_refused_and_older_is_upgraded_by_the_daemon_only(pg_dsn: str) -> None:
    from event_router.core.spool.postgresql import SCHEMA_VERSION, PostgreSQLSpool

    with pytest.raises(SpoolError, match="no router has used this database"):
        PostgreSQLSpool(pg_dsn).open("shared")
    s = PostgreSQLSpool(pg_dsn)
    s.open("exclusive")
    s.close()
    _pg_execute(pg_dsn, "UPDATE event_router.meta SET value = '99' WHERE key = 'schema_version'")
    for mode in ("exclusive", "shared", "readonly"):
        with pytest.raises(SpoolError, match=f"has schema 99, newer than this router's {SCHEMA_VERSION}"):
            PostgreSQLSpool(pg_dsn).open(mode)
    _pg_execute(pg_dsn, "UPDATE event_router.meta SET value = '0' WHERE key = 'schema_version'")
    with pytest.raises(SpoolError, match="older than this router's"):
        PostgreSQLSpool(pg_dsn).open("shared")


def test_postgresql_routers_starting_together_create_the_schema_once(pg_dsn: str) -> None:
    """Migrations run under an advisory lock: eight routers opening a new database at once all succeed."""
    from concurrent.futures import ThreadPoolExecutor

    from event_router.core.spool.postgresql import SCHEMA_VERSION, PostgreSQLSpool

    spools = [PostgreSQLSpool(pg_dsn) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda s: s.open("exclusive"), spools))
    for s in spools:
        s.close()
    reader = PostgreSQLSpool(pg_dsn)
    reader.open("readonly")
    try:
        assert reader.status().pending_events == 0
    finally:
        reader.close()
    import psycopg

    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT value FROM event_router.meta WHERE key = 'schema_version'").fetchall()
    assert rows == [(str(SCHEMA_VERSION),)]


async def test_postgresql_a_delivery_is_leased_to_one_router_until_settled_or_expired(pg_dsn: str) -> None:
    """Two routers on one database: what one was handed the other is not, until the first gives it back
    (a retry), finishes it, or dies (its lease expires); a finished event is gone for both."""
    from event_router.core.spool.postgresql import PostgreSQLSpool

    one, two = PostgreSQLSpool(pg_dsn, lease=1.0), PostgreSQLSpool(pg_dsn, lease=1.0)
    one.open("exclusive")
    two.open("exclusive")
    try:
        stored = await one.store([event(i) for i in range(6)])
        dids = [d[0] for d in delivery_ids(stored)]
        now = one.clock.now() + 1
        first = one.fetch_due("a", now, 4, set())
        second = two.fetch_due("a", now, 10, set())
        assert [r.did for r in first] == dids[:4]
        assert [r.did for r in second] == dids[4:], "the other router gets only what is not leased"
        assert two.fetch_due("a", now, 10, {r.did for r in second}) == []
        # one gives back a retry due now, finishes one; it keeps renewing the other two
        await one.settle(done=[dids[0]], retry=[(dids[1], 1, now - 1, "503")])
        assert [r.did for r in two.fetch_due("a", now, 10, {r.did for r in second})] == [dids[1]]
        # one "dies": its writer stops renewing (closed without giving back, as a SIGKILL leaves it)
        one._held.clear()
        one.close()
        import psycopg

        with psycopg.connect(pg_dsn) as conn:
            conn.execute("UPDATE event_router.deliveries SET lease_owner = 'dead' WHERE did = ANY(%s)", (dids[2:4],))
        assert two.fetch_due("a", now, 10, {*(r.did for r in second), dids[1]}) == []
        await anyio.sleep(1.2)
        taken = two.fetch_due("a", two.clock.now() + 1, 10, {*(r.did for r in second), dids[1]})
        assert sorted(r.did for r in taken) == dids[2:4], "after the lease, the survivor takes them"
        await two.settle(done=[*dids[1:]])
        assert two.status().pending_events == 0
    finally:
        one.close()
        two.close()


async def test_postgresql_a_delivery_held_in_memory_is_leased_by_its_router(pg_dsn: str) -> None:
    """What a router stored and offered to its worker (in memory, never fetched) its next fetch leases without
    handing it out: no other router takes it meanwhile. Once the router settled it (a retry), it is anyone's."""
    from event_router.core.spool.postgresql import PostgreSQLSpool

    one, two = PostgreSQLSpool(pg_dsn), PostgreSQLSpool(pg_dsn)
    one.open("exclusive")
    two.open("exclusive")
    try:
        ((did,),) = delivery_ids(await one.store([event(1)]))
        now = one.clock.now() + 1
        assert one.fetch_due("a", now, 10, {did}) == []
        assert two.fetch_due("a", now, 10, set()) == [], "leased to the router holding it"
        await one.settle(retry=[(did, 1, now - 1, "503")])
        assert [(r.did, r.attempts) for r in two.fetch_due("a", now, 10, set())] == [(did, 1)]
    finally:
        one.close()
        two.close()


async def test_postgresql_a_repeated_message_id_is_stored_once_across_routers(pg_dsn: str) -> None:
    from event_router.core.spool import SeenMessage
    from event_router.core.spool.postgresql import PostgreSQLSpool

    later = time.time() + 3600

    def seen(i: int, message: str) -> StoreEvent:
        return StoreEvent(f"e{i}", "t", b"{}", [NewDelivery("a", "r", None)], SeenMessage("hook", message, later))

    one, two = PostgreSQLSpool(pg_dsn), PostgreSQLSpool(pg_dsn)
    one.open("exclusive")
    two.open("exclusive")
    try:
        results = await asyncio.gather(
            one.store([seen(1, "m1"), seen(2, "m2")]), two.store([seen(3, "m2"), seen(4, "m1"), seen(5, "m3")])
        )
        flat = [r is None for batch in results for r in batch]
        assert flat.count(True) == 2 and flat[4] is False, results
        assert one.known_messages([SeenMessage("hook", m, later) for m in ("m1", "m2", "m3", "m4")]) == {
            ("hook", "m1"),
            ("hook", "m2"),
            ("hook", "m3"),
        }
        # ids claimed in opposite orders by two routers at once: each waits for the other's row of an id,
        # never both (a deadlock would fail one store)
        for round_ in range(30):
            ids = [f"r{round_}-{k}" for k in range(8)]
            stores = await asyncio.gather(
                one.store([seen(100 + k, m) for k, m in enumerate(ids)]),
                two.store([seen(200 + k, m) for k, m in enumerate(reversed(ids))]),
            )
            assert sum(r is not None for batch in stores for r in batch) == 8, stores
    finally:
        one.close()
        two.close()
