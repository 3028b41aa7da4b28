"""The bare insert loop of pg_webhook_file: the PostgreSQL spool's writes for webhook events, without the router.

    python bench/_pg_insert.py {psycopg,asyncpg} DSN GROUP SECONDS

One connection (`synchronous_commit = on`, tables in the `event_router` schema the spool's migrations made),
one transaction per group of GROUP events, for SECONDS after a short warm-up. Each transaction holds what
`PostgreSQLSpool.store` writes for one store call of the webhook input (one store in flight, so a group
commit holds one such call), with the statements of `postgresql.py`: the events in one multi-row insert
(unnest of arrays, binary parameters, the identities returned), their deliveries (one each, to a file
output) the same way, then the announced keys under the shared advisory lock (`_write_announcements`).
The events all announce the same key, as the benchmark's webhook bodies do. Nothing is read back or
deleted: what the file output's outcomes add to the router's transactions is not here.

`asyncpg` runs the same SQL ($n parameters, statements prepared by asyncpg itself). Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from itertools import cycle
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import example_body, percentile

# what PostgreSQLSpool._insert_events and _write_announcements send, with the driver's parameter marks
EVENTS = (
    "INSERT INTO events (id, trigger, stored_at, body) "
    "SELECT * FROM unnest({0}::text[], {1}::text[], {2}::float8[], {3}::bytea[]) RETURNING seq"
)
DELIVERIES = (
    "INSERT INTO deliveries (seq, output, route, payload, due, first_at) "
    "SELECT s, o, r, p, {0}, {1} FROM unnest({2}::int8[], {3}::text[], {4}::text[], {5}::bytea[]) AS u(s, o, r, p) "
    "RETURNING did"
)
LOCK = "SELECT pg_advisory_xact_lock_shared({0})"
ANNOUNCED = "INSERT INTO announced (key) SELECT * FROM unnest({0}::bytea[]) ON CONFLICT DO NOTHING"
WARMUP_GROUPS = 20


class Events:
    """Stored bodies as the pipeline makes them (`Event.to_json` of the benchmark's webhook body), each with
    its own id, handed out in groups."""

    def __init__(self, group: int):
        from event_router.api.event import Event
        from event_router.core.announced import announced_key

        body = orjson.loads(example_body(1200))
        made = [Event(trigger=body["trigger"], data=body["data"], source="connector") for _ in range(max(256, group))]
        self.pool = cycle([(e.id, e.to_json()) for e in made])
        self.group = group
        self.trigger = body["trigger"]
        key = announced_key(body["trigger"], body["data"])
        assert key is not None, "the benchmark's body announces a key, as the Connector's events do"
        self.key = key

    def next(self) -> tuple[list[str], list[str], list[float], list[bytes]]:
        taken = [next(self.pool) for _ in range(self.group)]
        now = time.time()
        return [i for i, _ in taken], [self.trigger] * self.group, [now] * self.group, [b for _, b in taken]


def run_psycopg(dsn: str, events: Events, seconds: float) -> list[float]:
    import psycopg

    from event_router.core.spool.postgresql import ANNOUNCE_LOCK, NAMESPACE

    def write(conn: psycopg.Connection[Any]) -> None:
        ids, triggers, stored, bodies = events.next()
        now = stored[0]
        cur = conn.cursor(binary=True)
        cur.execute(EVENTS.format("%b", "%b", "%b", "%b"), (ids, triggers, stored, bodies))
        seqs = sorted(int(r[0]) for r in cur.fetchall())
        n = len(seqs)
        cur.execute(
            DELIVERIES.format(*["%b"] * 6), (now, now, seqs, ["archive"] * n, ["archive everything"] * n, [None] * n)
        )
        cur.fetchall()
        conn.execute(LOCK.format("%s"), (ANNOUNCE_LOCK,))
        conn.execute(ANNOUNCED.format("%b"), ([events.key],), binary=True)
        conn.commit()

    with psycopg.connect(dsn, autocommit=False) as conn:
        conn.execute(f"SET search_path = {NAMESPACE}")
        conn.execute("SET synchronous_commit = on")
        conn.commit()
        return _loop(lambda: write(conn), seconds)


async def run_asyncpg(dsn: str, events: Events, seconds: float) -> list[float]:
    import asyncpg  # type: ignore[import-untyped]

    from event_router.core.spool.postgresql import ANNOUNCE_LOCK, NAMESPACE

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"SET search_path = {NAMESPACE}")
        await conn.execute("SET synchronous_commit = on")
        insert_events = EVENTS.format("$1", "$2", "$3", "$4")
        insert_deliveries = DELIVERIES.format("$1::float8", "$2::float8", "$3", "$4", "$5", "$6")

        async def write() -> None:
            ids, triggers, stored, bodies = events.next()
            now = stored[0]
            async with conn.transaction():
                rows = await conn.fetch(insert_events, ids, triggers, stored, bodies)
                seqs = sorted(int(r[0]) for r in rows)
                n = len(seqs)
                await conn.fetch(
                    insert_deliveries, now, now, seqs, ["archive"] * n, ["archive everything"] * n, [None] * n
                )
                await conn.execute(LOCK.format("$1"), ANNOUNCE_LOCK)
                await conn.execute(ANNOUNCED.format("$1"), [events.key])

        times: list[float] = []
        for _ in range(WARMUP_GROUPS):
            await write()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            await write()
            times.append(time.perf_counter() - began)
        return times
    finally:
        await conn.close()


def _loop(write: Callable[[], None], seconds: float) -> list[float]:
    """Warm up (statements prepared, pages in), then groups back to back for `seconds`: each one's time."""
    for _ in range(WARMUP_GROUPS):
        write()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        began = time.perf_counter()
        write()
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    driver, dsn, group, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    events = Events(group)
    cpu = time.process_time()
    if driver == "psycopg":
        times = run_psycopg(dsn, events, seconds)
    elif driver == "asyncpg":
        times = asyncio.run(run_asyncpg(dsn, events, seconds))
    else:
        raise SystemExit(f"unknown driver {driver!r}: psycopg or asyncpg")
    cpu = time.process_time() - cpu
    took = sum(times)
    count = len(times) * group
    result: dict[str, Any] = {
        "driver": driver,
        "group": group,
        "groups": len(times),
        "events_per_s": round(count / took) if took else None,
        "group_ms_p50": round(statistics.median(times) * 1000, 3) if times else None,
        "group_ms_p99": round((percentile(times, 99) or 0) * 1000, 3) if times else None,
        # warm-up included: a little more than the measured groups' share
        "client_cpu_us_per_event": round(cpu / ((len(times) + WARMUP_GROUPS) * group) * 1e6, 1),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
