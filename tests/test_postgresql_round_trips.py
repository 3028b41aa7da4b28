"""Round trips to the server per group commit of the PostgreSQL spool: each is a wait of the writer thread,
then a wait for the GIL behind the event loop, so they bound its latency. Counted from libpq's protocol trace
of the writer's connection (`PQtrace`): a round trip is a run of messages the client sends before it reads
the server's answer. One group is made at a time: the writer is held by an op of its own while the group's
ops are queued, so it gathers them all into its next transaction."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
from psycopg import pq

from event_router.core.spool import BLOCKED, Attempt, NewDelivery, SeenMessage, StoreEvent
from event_router.core.spool.postgresql import PostgreSQLSpool
from event_router.core.spool.writer import Op
from event_router.testing import delivery_ids

#: a group's size in these tests: about what the webhook makes at 64 senders
GROUP = 60


def _event(n: int, *, key: str | None = None, seen: bool = False) -> StoreEvent:
    return StoreEvent(
        f"e{n}",
        "transport.messageReceived",
        b'{"n": %d}' % n,
        [NewDelivery("out", "all", None, ordering_key=key)],
        seen=SeenMessage("in", f"m{n}", 4e9) if seen else None,
    )


def _delivered(did: int) -> Attempt:
    return Attempt(did, 1, 1.0, 0.01, "delivered", status=200)


class Traced:
    """A spool whose writer's connection writes libpq's protocol trace while a group runs (`group`)."""

    def __init__(self, dsn: str, where: Path) -> None:
        self.where = where
        self.files: list[IO[str]] = []
        self.trace = where / "none.txt"
        self.threshold: int | None = None
        self.spool = PostgreSQLSpool(dsn)
        self.spool.open("exclusive")

    async def group(self, ops: Callable[[], list[Awaitable[Any]]]) -> list[Any]:
        """Run the writes `ops` makes as one group, traced: the writer waits in an op of its own (its own
        transaction), which starts the trace, until all are queued; an op after them ends it (libpq flushes it)."""
        started, go = threading.Event(), threading.Event()
        trace = self.where / f"group-{len(self.files)}.txt"

        def hold(conn: psycopg.Connection[Any]) -> None:
            out = trace.open("w")  # libpq writes through this descriptor: open until the test ends
            self.files.append(out)
            conn.pgconn.trace(out.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            # every statement's text in the trace (a prepared one is sent by name): the same round trips
            self.threshold, conn.prepare_threshold = conn.prepare_threshold, None
            started.set()
            go.wait(10)

        def stop(conn: psycopg.Connection[Any]) -> None:
            conn.pgconn.untrace()
            conn.prepare_threshold = self.threshold

        held: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.spool._queue.put(Op(hold, None, held))
        assert await asyncio.to_thread(started.wait, 10)
        tasks = [asyncio.ensure_future(op) for op in ops()]
        await asyncio.sleep(0)  # each task runs to its `_write`, which queues its op
        assert self.spool._queue.qsize() == len(tasks)
        go.set()
        results = await asyncio.gather(*tasks)
        await self.spool._write(stop)
        self.trace = trace
        return results

    def round_trips(self, marker: str) -> int:
        """The round trips of the transaction of the last group whose statements include
        `marker`, from its BEGIN to its COMMIT's answer."""
        transactions: list[list[str]] = []
        for line in self.trace.read_text().splitlines():
            if line.startswith("F") and '"BEGIN"' in line:
                transactions.append([])
            if transactions:
                transactions[-1].append(line)
        found = [t for t in transactions if any(line.startswith("F") and marker in line for line in t)]
        assert found, f"no transaction with {marker!r}"
        # a round trip: the messages the client sends before it reads the server's next answer
        return sum(1 for before, line in zip(["B", *found[-1]], found[-1], strict=False) if line[0] == "F" != before[0])


@pytest.fixture
def traced(pg_dsn: str, tmp_path: Path) -> Iterator[Traced]:
    it = Traced(pg_dsn, tmp_path)
    try:
        yield it
    finally:
        it.spool.close()
        for out in it.files:
            out.close()


@pytest.mark.anyio
async def test_round_trips_of_storing_and_settling_groups(traced: Traced) -> None:
    """A group of sixty stores of one event each, of one store of sixty events, of sixty settles (delivered,
    with their attempts), of thirty of each, and of sixty stores with ordering keys: each group's statements
    reach the server in two round trips (everything up to the commit, whose answers the writer reads before it
    commits, then the commit). Stores with message ids take one more each (the claim's answer decides what is
    stored). Run with -s for the counts."""
    spool = traced.spool
    trips: dict[str, int] = {}
    stored = await traced.group(lambda: [spool.store([_event(n)]) for n in range(GROUP)])
    trips["60 stores of 1 event"] = traced.round_trips("INSERT INTO events")
    dids = [did for [[did]] in stored]
    assert len(set(dids)) == GROUP
    [batch] = await traced.group(lambda: [spool.store([_event(n) for n in range(GROUP, 2 * GROUP)])])
    trips["1 store of 60 events"] = traced.round_trips("INSERT INTO events")
    dids += [did for [did] in batch]
    await traced.group(lambda: [spool.settle(done=[did], attempts=[_delivered(did)]) for did in dids[:GROUP]])
    trips["60 settles (done)"] = traced.round_trips("DELETE FROM deliveries")
    half = GROUP // 2
    mixed = await traced.group(
        lambda: (
            [spool.settle(done=[did], attempts=[_delivered(did)]) for did in dids[GROUP : GROUP + half]]
            + [spool.store([_event(n)]) for n in range(2 * GROUP, 2 * GROUP + half)]
        )
    )
    trips["30 settles + 30 stores"] = traced.round_trips("DELETE FROM deliveries")
    assert mixed[half:] == [[[did]] for did in range(dids[-1] + 1, dids[-1] + 1 + half)]
    keyed = await traced.group(lambda: [spool.store([_event(n, key=f"k{n % 4}")]) for n in range(200, 200 + GROUP)])
    trips["60 stores of 1 event with an ordering key (4 keys)"] = traced.round_trips("INSERT INTO events")
    seen = await traced.group(lambda: [spool.store([_event(n, seen=True)]) for n in range(300, 300 + GROUP)])
    trips["60 stores of 1 event with a message id"] = traced.round_trips("INSERT INTO events")
    for what, count in trips.items():
        print(f"round trips, {what}: {count}")
    assert len(keyed) == len(seen) == GROUP and None not in seen, "every message id was new"
    with psycopg.connect(spool.dsn) as conn:
        due = conn.execute(
            "SELECT ordering_key, count(*) FROM event_router.deliveries WHERE ordering_key IS NOT NULL "
            "AND due <> %s GROUP BY ordering_key ORDER BY ordering_key",
            (BLOCKED,),
        ).fetchall()
    assert due == [(f"k{n}", 1) for n in range(4)], "one delivery due per key, the others blocked behind it"
    assert trips["60 stores of 1 event"] <= 2
    assert trips["1 store of 60 events"] <= 2
    assert trips["60 settles (done)"] <= 2
    assert trips["30 settles + 30 stores"] <= 2
    assert trips["60 stores of 1 event with an ordering key (4 keys)"] <= 2
    # a message id's claim is read by its store before it inserts: a round trip per store
    assert trips["60 stores of 1 event with a message id"] <= GROUP + 2


@pytest.mark.anyio
async def test_round_trips_of_finishing_keyed_deliveries(traced: Traced) -> None:
    """Sixty settles of deliveries with ordering keys, each the first of its key with one behind it: two round
    trips too (the keys' locks are taken at the start, so each key's next is made due in the finishing
    statement). Sixty settles of deliveries this router was not handed (another router's): one more, which
    reads their keys before the group takes its locks. Run with -s for the counts."""
    spool = traced.spool
    trips: dict[str, int] = {}
    await spool.store([_event(n, key=f"k{n % GROUP}") for n in range(2 * GROUP)])
    firsts = [row.did for row in spool.fetch_due("out", spool.clock.now() + 1, 2 * GROUP, set())]
    assert len(firsts) == GROUP, "the first of each key is due, the one behind it waits"
    await traced.group(lambda: [spool.settle(done=[did], attempts=[_delivered(did)]) for did in firsts])
    trips["60 settles of keyed deliveries (done)"] = traced.round_trips("DELETE FROM deliveries")
    other = PostgreSQLSpool(spool.dsn)
    other.open("exclusive")
    try:
        nexts = [row.did for row in other.fetch_due("out", other.clock.now() + 1, 2 * GROUP, set())]
        assert len(nexts) == GROUP, "the next of each key is due once its first is done"
        unordered = [did for [did] in delivery_ids(await other.store([_event(n) for n in range(1000, 1000 + GROUP)]))]
    finally:
        other.close()
    await traced.group(lambda: [spool.settle(done=[did]) for did in nexts])
    trips["60 settles of keyed deliveries handed to another router"] = traced.round_trips("DELETE FROM deliveries")
    await traced.group(lambda: [spool.settle(done=[did]) for did in unordered])
    trips["60 settles of deliveries stored by another router"] = traced.round_trips("DELETE FROM deliveries")
    for what, count in trips.items():
        print(f"round trips, {what}: {count}")
    assert spool.status().pending_events == 0
    assert trips["60 settles of keyed deliveries (done)"] <= 2
    assert trips["60 settles of keyed deliveries handed to another router"] <= 3
    assert trips["60 settles of deliveries stored by another router"] <= 3
