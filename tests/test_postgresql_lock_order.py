"""The order in which the PostgreSQL spool's groups take their locks: every group of every router takes its
advisory locks (the ordering keys it stores or finishes, sorted, then ANNOUNCE_LOCK) before any row lock or
write, and the events of the deliveries it finishes in one sorted statement, so two routers' groups storing
and settling do not wait for each other in a cycle (a deadlock PostgreSQL would break after
`deadlock_timeout` by failing one of them, which the writer then runs again: no loss, but a second and a log
line). Each scenario is one way two groups took their locks in opposite orders.

Each scenario holds one router's group at a chosen point with a third session's row lock (its transaction
waits there), lets the other router's group run into it, then lets go: a deadlock would show in the
server's count (`pg_stat_database.deadlocks`) and in the writer's log. `deadlock_timeout` is lowered on the
scratch database so a deadlock, if any, is found at once. A last test runs two routers storing and finishing
at once with shared announced and ordering keys and counts the same."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest

from event_router.core.announced import announced_key
from event_router.core.spool import Announcement, NewDelivery, SeenMessage, StoreEvent
from event_router.core.spool.postgresql import PostgreSQLSpool
from event_router.core.spool.writer import Op
from event_router.testing import delivery_ids, wait_for

pytestmark = pytest.mark.anyio

#: what the writer logs when a group it ran was failed by PostgreSQL to break a deadlock
RUN_AGAIN = "spool group rolled back to break a deadlock, run again"
#: the ordering keys of the last test
KEYS = ("k0", "k1", "k2", "k3", "k4", "k5")


def event(
    n: int,
    *deliveries: tuple[str, str | None],
    announced: bytes | None = None,
    claim: bool = False,
    seen: str | None = None,
) -> StoreEvent:
    """Event `n` with a delivery per (output, ordering key)."""
    body = b'{"id":"e%d","trigger":"t","source":"s","received_at":"x","data":{},"meta":{}}' % n
    return StoreEvent(
        f"e{n}",
        "t",
        body,
        [NewDelivery(output, "r", None, key) for output, key in deliveries],
        seen=None if seen is None else SeenMessage("in", seen, 4e9),
        announced=None if announced is None else Announcement(announced, claim),
    )


def change(text: str) -> bytes:
    """The announced key of a change (`event_router.core.announced`)."""
    found = announced_key("transport.messageReceived", {"id": text, "createdAt": "2026-08-20T10:00:00.000Z"})
    assert found is not None
    return found


def _pg(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, args or None)
        return cur.fetchall() if cur.description else []


class Cluster:
    """Two routers on one scratch database, and what the server counted of deadlocks there."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.name = _pg(dsn, "SELECT current_database()")[0][0]
        # found within 50 ms instead of a second: a scenario that deadlocks fails fast (and surely: its
        # waits last longer than that)
        _pg(dsn, f"ALTER DATABASE {self.name} SET deadlock_timeout = '50ms'")
        self.deadlocks_before = self.deadlocks()
        self.one, self.two = PostgreSQLSpool(dsn), PostgreSQLSpool(dsn)
        self.one.open("exclusive")
        self.two.open("exclusive")

    def deadlocks(self) -> int:
        """The deadlocks the server found in this database (a backend reports its count when it ends, or
        within a second of its last transaction)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = %s", (self.name,)).fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> int:
        """Close both routers; the deadlocks found since the start (their sessions have ended: all counted)."""
        self.one.close()
        self.two.close()
        wait_for(
            lambda: (
                not _pg(
                    self.dsn,
                    "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name LIKE 'event-router %%'",
                )
            ),
            what="the routers' sessions ended",
        )
        return self.deadlocks() - self.deadlocks_before

    def waiting(self, spool: PostgreSQLSpool) -> bool:
        """Whether `spool`'s writer waits for a lock (a row's, or an advisory one)."""
        return bool(
            _pg(
                self.dsn,
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                f"event-router {spool.owner}",
            )
        )


async def group(spool: PostgreSQLSpool, ops: Callable[[], list[Awaitable[Any]]]) -> list[Any]:
    """Run the writes `ops` makes as one group of `spool`'s writer (held by an op of its own until all are
    queued); their results."""
    started, go = threading.Event(), threading.Event()

    def hold(conn: psycopg.Connection[Any]) -> None:
        started.set()
        go.wait(10)

    held: concurrent.futures.Future[Any] = concurrent.futures.Future()
    spool._queue.put(Op(hold, None, held))
    assert await asyncio.to_thread(started.wait, 10)
    tasks = [asyncio.ensure_future(op) for op in ops()]
    await asyncio.sleep(0)  # each task runs to its `_write`, which queues its op
    assert spool._queue.qsize() == len(tasks)
    go.set()
    return await asyncio.gather(*tasks)


@pytest.fixture
def cluster(pg_dsn: str, caplog: pytest.LogCaptureFixture) -> Iterator[Cluster]:
    caplog.set_level(logging.INFO, logger="event_router.core.spool")
    it = Cluster(pg_dsn)
    try:
        yield it
    finally:
        it.one.close()
        it.two.close()


def no_deadlock(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    found = cluster.close()
    rerun = [r for r in caplog.records if r.getMessage() == RUN_AGAIN]
    assert (found, len(rerun)) == (0, 0), f"{found} deadlocks found by the server, {len(rerun)} groups run again"


def due_per_key(dsn: str) -> dict[str, tuple[int, bool]]:
    """Per ordering key with pending deliveries: how many are due, and whether its lowest id is one of them."""
    rows = _pg(
        dsn,
        "SELECT ordering_key, count(*) FILTER (WHERE due < 'Infinity'), "
        "min(did) = min(did) FILTER (WHERE due < 'Infinity') FROM event_router.deliveries "
        "WHERE ordering_key IS NOT NULL GROUP BY 1",
    )
    return {key: (due, bool(lowest)) for key, due, lowest in rows}


async def test_finishing_a_delivery_of_a_key_not_held_here_beside_a_store_of_that_key(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Router two finishes the head of key k, which it was not handed (its key unknown when the group
    starts), with a store announcing change K; router one stores a delivery of k and an event announcing K,
    its group held (by a message id a third session is inserting) after it took k's lock. Two's group must
    take k's lock before it writes K: written first, one's insert of K would wait for two's commit while two
    waits for k's lock, held by one."""
    one, two = cluster.one, cluster.two
    [[head]] = delivery_ids(await one.store([event(1, ("a", "k"))]))
    key = change("K")
    blocker = psycopg.connect(cluster.dsn)
    try:
        blocker.execute("INSERT INTO event_router.seen_message_ids VALUES ('in', 'm', 4e9)")  # not committed
        storing = asyncio.ensure_future(
            group(one, lambda: [one.store([event(2, ("a", "k"), announced=key, seen="m")])])
        )
        await asyncio.to_thread(wait_for, lambda: cluster.waiting(one), what="one's group held by the message id")
        finishing = asyncio.ensure_future(
            group(two, lambda: [two.settle(done=[head]), two.store([event(3, ("b", None), announced=key)])])
        )
        await asyncio.to_thread(wait_for, lambda: cluster.waiting(two), what="two's group waiting for k's lock")
        blocker.rollback()
        [[stored]], [done, [live]] = await asyncio.gather(storing, finishing)
    finally:
        blocker.close()
    assert done == [] and isinstance(stored, list) and isinstance(live, list)
    assert due_per_key(cluster.dsn) == {"k": (1, True)}, "the stored delivery of k is due: its head is done"
    no_deadlock(cluster, caplog)


async def test_a_claim_beside_a_live_store_finishing_deliveries_of_one_event(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """An event went to two outputs; each router finishes one of its deliveries in a group that also stores an
    event announcing a change: one's a live event's, two's a claim (a recovered event). Both lock the event's
    row to finish; the claim holds ANNOUNCE_LOCK exclusive and the live store needs it shared. Taken as each
    op comes, two's claim would hold the lock while waiting for the row one locked, one waiting for the
    lock; taken before any row, they wait for each other in one order."""
    one, two = cluster.one, cluster.two
    [[to_a, to_b]] = delivery_ids(await one.store([event(1, ("a", None), ("b", None))]))
    blocker = psycopg.connect(cluster.dsn)
    try:
        # one's finish locks the event's row, then waits for this delivery's
        blocker.execute("SELECT 1 FROM event_router.deliveries WHERE did = %s FOR UPDATE", (to_a,))
        live = asyncio.ensure_future(
            group(one, lambda: [one.settle(done=[to_a]), one.store([event(2, ("c", None), announced=change("L"))])])
        )
        await asyncio.to_thread(wait_for, lambda: cluster.waiting(one), what="one's finish held by the delivery")
        claim = asyncio.ensure_future(
            group(
                two,
                lambda: [
                    two.store([event(3, ("c", None), announced=change("R"), claim=True)]),
                    two.settle(done=[to_b]),
                ],
            )
        )
        await asyncio.to_thread(wait_for, lambda: cluster.waiting(two), what="two's group waiting")
        blocker.rollback()
        [done_a, [stored_live]], [[claimed], done_b] = await asyncio.gather(live, claim)
    finally:
        blocker.close()
    assert done_a == done_b == [] and isinstance(stored_live, list) and isinstance(claimed, list)
    assert _pg(cluster.dsn, "SELECT id FROM event_router.events ORDER BY id") == [("e2",), ("e3",)]
    no_deadlock(cluster, caplog)


async def test_a_dead_letter_beside_finishes_of_the_same_events(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Two events went to outputs a and b. One router dead-letters a's delivery of the second event and
    delivers a's of the first, in one group; the other delivers b's of both. Both lock the two events' rows:
    the dead letter's apart from its group's other finishes, they would be locked in the order of the ops,
    the second event first, while the other router locks them in seq order."""
    one, two = cluster.one, cluster.two
    [[a1, b1], [a2, b2]] = delivery_ids(
        await one.store([event(1, ("a", None), ("b", None)), event(2, ("a", None), ("b", None))])
    )
    blocker = psycopg.connect(cluster.dsn)
    try:
        # one's finish of the dead letter's delivery locks its event's row, then waits for the delivery's
        blocker.execute("SELECT 1 FROM event_router.deliveries WHERE did = %s FOR UPDATE", (a2,))
        dead_and_done = asyncio.ensure_future(
            group(one, lambda: [one.settle(dead=[(a2, "permanent", "410", 1)]), one.settle(done=[a1])])
        )
        await asyncio.to_thread(wait_for, lambda: cluster.waiting(one), what="one's finish held by the delivery")
        done = asyncio.ensure_future(group(two, lambda: [two.settle(done=[b1, b2])]))
        await asyncio.to_thread(wait_for, lambda: cluster.waiting(two), what="two's finish waiting")
        blocker.rollback()
        [[dlid], finished], [nothing] = await asyncio.gather(dead_and_done, done)
    finally:
        blocker.close()
    assert isinstance(dlid, int) and finished == nothing == []
    assert _pg(cluster.dsn, "SELECT count(*) FROM event_router.events") == [(0,)], "both events finished"
    assert _pg(cluster.dsn, "SELECT count(*) FROM event_router.dead_letters") == [(1,)]
    no_deadlock(cluster, caplog)


async def test_two_routers_storing_and_finishing_shared_keys_at_once(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Both routers receive the same changes (live events announcing the same keys, in opposite orders) with
    deliveries of a few ordering keys and of an unordered output, now and then a recovered one (a claim),
    while each delivers what it is handed, dead-letters some and finishes some the other router was handed
    (their keys unknown to it), all in groups of several ops. No group waits for another in a cycle, and
    every key is left with exactly one delivery due, its first."""
    one, two = cluster.one, cluster.two
    pick = random.Random(7)
    numbers = iter(range(1, 1_000_000))

    async def burst(here: PostgreSQLSpool, there: PostgreSQLSpool, round_: int, flip: bool) -> None:
        changes = [change(f"{round_}-{j}") for j in range(6)]
        if flip:
            changes.reverse()
        writes: list[Awaitable[Any]] = [
            here.store([event(next(numbers), ("a", pick.choice(KEYS)), ("b", None), announced=k)]) for k in changes
        ]
        if pick.random() < 0.3:
            writes.append(
                here.store([event(next(numbers), ("b", None), announced=change(f"{round_}-{flip}"), claim=True)])
            )
        for output in ("a", "b"):
            for row in here.fetch_due(output, here.clock.now() + 1, 20, set()):
                roll = pick.random()
                if roll < 0.1:
                    writes.append(here.settle(dead=[(row.did, "permanent", "410", 1)]))
                elif roll < 0.4:
                    writes.append(there.settle(done=[row.did]))
                else:
                    writes.append(here.settle(done=[row.did]))
        pick.shuffle(writes)
        # in a few groups, some of them sharing a commit with the other router's
        tasks = []
        for start in range(0, len(writes), 4):
            tasks += [asyncio.ensure_future(w) for w in writes[start : start + 4]]
            await asyncio.sleep(pick.random() * 0.003)
        await asyncio.gather(*tasks)

    for round_ in range(40):
        await asyncio.gather(burst(one, two, round_, False), burst(two, one, round_, True))
    assert _pg(cluster.dsn, "SELECT count(*) FROM event_router.dead_letters")[0][0] > 0, "some dead-lettered"
    keys = due_per_key(cluster.dsn)
    assert keys, "something keyed is left pending to look at"
    assert all(due == (1, True) for due in keys.values()), keys
    no_deadlock(cluster, caplog)


async def test_a_finished_key_not_locked_at_the_start_is_locked_late_and_its_next_made_due(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Should a router believe a delivery it holds has no ordering key while it has one (never expected:
    what it holds, it knows the key of), the group that finishes it did not lock the key at its start: it
    says so, locks the key then, and makes the key's next delivery due all the same."""
    one = cluster.one
    first, second = (dids[0] for dids in delivery_ids(await one.store([event(1, ("a", "k")), event(2, ("a", "k"))])))
    assert [row.did for row in one.fetch_due("a", one.clock.now() + 1, 10, set())] == [first]
    one._held_keys.clear()
    await one.settle(done=[first])
    assert any(r.getMessage().startswith("spool finished ordering keys it had not locked") for r in caplog.records)
    assert [row.did for row in one.fetch_due("a", one.clock.now() + 1, 10, set())] == [second]


async def test_unblock_makes_the_first_pending_delivery_of_each_key_due_and_no_other(cluster: Cluster) -> None:
    """`_unblock` (the late-lock fallback) on its own: the finishing statement already makes the next due
    in the test above, so that test alone would not see it fail. Per key, the first delivery still pending
    becomes due now; the one behind it waits, and a key whose first is due already is left alone."""
    from event_router.core.spool import BLOCKED
    from event_router.core.spool.postgresql import _unblock

    one = cluster.one
    stored = await one.store([event(n, ("a", key)) for n, key in enumerate(["k", "k", "k", "j"])])
    first, second, third, other = (dids[0] for dids in delivery_ids(stored))
    _pg(cluster.dsn, "DELETE FROM event_router.deliveries WHERE did = %s", first)
    now = one.clock.now()
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute("SET search_path TO event_router")
        _unblock(conn, {("a", "k"), ("a", "j")}, now)
    due = dict(
        _pg(cluster.dsn, "SELECT did, due FROM event_router.deliveries WHERE did = ANY(%s)", [second, third, other])
    )
    assert due[second] == pytest.approx(now)
    assert due[third] == BLOCKED
    assert due[other] < now  # due since it was stored: not moved
