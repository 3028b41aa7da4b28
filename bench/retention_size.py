"""Spool size per kept event (#19, `[router] retention`): bytes on disk per event the spool keeps for replay.

Stores N events through the spool's own `store` (groups of GROUP, one delivery each, received now, as the
router stores them with retention on), delivers them (`settle`), so they are kept and none is pending, and
measures the spool against the same spool before:

- SQLite: the file after its last connection closed (WAL checkpointed into it), and the pages in use
  (page_count - freelist_count, the file's pages that hold rows);
- PostgreSQL: `pg_total_relation_size` of the events table (heap, TOAST, its indexes) after VACUUM, in a
  scratch database of its own (created and dropped here), and the database's size.

The events are the Connector's example events (the reference's example-events.json, or the test kit's copy)
in turn, as the webhook input makes them (its meta: kept headers, remote address, path).

    .venv/bin/python bench/retention_size.py [--events 200000] [--backends sqlite,postgresql]
        [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

Then it prunes them all as the router does (`prune_kept`, PRUNE_BATCH per write) and times each batch: how
long one holds the writer (and the stores its commit is shared with).

Prints one JSON line per backend; `bytes_per_event` times a million is the spool's growth per million kept.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, utc_now

from event_router.api.event import Event, new_event_id
from event_router.app import PRUNE_BATCH
from event_router.core.spool import NewDelivery, Spool, StoreEvent
from event_router.core.spool.sqlite import SQLiteSpool
from event_router.testing import delivery_ids, example_events

#: events per `store` (one commit), about what a busy webhook's group holds
GROUP = 500
#: the webhook input's meta for a request from the Connector (headers it keeps, remote address, path)
META = {
    "headers": {"content-type": "application/json", "user-agent": "axios/1.7.9"},
    "remote": "10.0.3.17",
    "path": "/events",
}


def bodies() -> list[tuple[str, bytes]]:
    """(trigger, stored JSON) of each example event as the router stores it."""
    return [(event.trigger, event.to_json()) for event in examples()]


def examples() -> list[Event]:
    """The example events as the webhook input makes them: each call a fresh id and time."""
    return [
        Event(trigger=item["trigger"], data=item.get("data"), source="connector", meta=dict(META))
        for item in example_events()
    ]


def events(count: int) -> Iterator[list[StoreEvent]]:
    """`count` events in groups of GROUP, the examples in turn, each with its own id."""
    batch: list[StoreEvent] = []
    for n in range(count):
        if n % GROUP == 0:
            made = examples()
        event = made[n % len(made)]
        event.id = new_event_id()
        body = event.to_json()
        batch.append(
            StoreEvent(event.id, event.trigger, body, [NewDelivery("archive", "all", None)], received=time.time())
        )
        if len(batch) == GROUP:
            yield batch
            batch = []
    if batch:
        yield batch


async def prune(spool: Spool) -> dict[str, float]:
    """Prune every kept event as the router does (PRUNE_BATCH per write): milliseconds per batch."""
    took: list[float] = []
    while True:
        started = time.monotonic()
        count = await spool.prune_kept(float("inf"), PRUNE_BATCH)
        took.append((time.monotonic() - started) * 1000)
        if count < PRUNE_BATCH:
            break
    assert spool.count_kept(0.0, float("inf")) == 0
    return {
        "prune_batches": len(took),
        "prune_batch_ms_median": round(statistics.median(took), 1),
        "prune_batch_ms_p99": round(sorted(took)[int(len(took) * 0.99)], 1),
        "prune_batch_ms_max": round(max(took), 1),
    }


async def keep(spool: Spool, count: int) -> float:
    """Store and deliver `count` events; seconds it took."""
    started = time.monotonic()
    for batch in events(count):
        stored = await spool.store(batch)
        await spool.settle(done=[ids[0] for ids in delivery_ids(stored)])
    took = time.monotonic() - started
    assert spool.depth == 0, spool.depth
    assert spool.count_kept(0.0, float("inf")) == count
    return took


def sqlite_pages(path: Path) -> tuple[int, int]:
    """(file bytes, bytes in pages in use) of a closed spool file."""
    conn = sqlite3.connect(path)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        conn.close()
    return path.stat().st_size, (pages - free) * page_size


def run_sqlite(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="retention-size-") as tmp:
        path = Path(tmp) / "spool.db"
        spool = SQLiteSpool(path)
        spool.open("exclusive")
        spool.close()
        empty_file, empty_used = sqlite_pages(path)
        spool = SQLiteSpool(path)
        spool.open("exclusive")
        try:
            took = asyncio.run(keep(spool, count))
        finally:
            spool.close()
        file_bytes, used = sqlite_pages(path)
        spool = SQLiteSpool(path)
        spool.open("exclusive")
        try:
            pruned = asyncio.run(prune(spool))
        finally:
            spool.close()
    return {
        "backend": "sqlite",
        "file_bytes": file_bytes - empty_file,
        "used_bytes": used - empty_used,
        "bytes_per_event": round((used - empty_used) / count, 1),
        "file_bytes_per_event": round((file_bytes - empty_file) / count, 1),
        "store_and_deliver_seconds": round(took, 1),
        **pruned,
    }


@contextmanager
def scratch_database(admin_dsn: str) -> Iterator[str]:
    import psycopg

    name = f"retention_size_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield urllib.parse.urlsplit(admin_dsn)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def pg_sizes(dsn: str) -> tuple[int, int, int]:
    """(events table with TOAST and indexes, its indexes alone, the database) in bytes, after VACUUM."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM event_router.events")
        row = conn.execute(
            "SELECT pg_total_relation_size('event_router.events'), pg_indexes_size('event_router.events'), "
            "pg_database_size(current_database())"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def run_postgresql(count: int, admin_dsn: str) -> dict[str, Any]:
    from event_router.core.spool.postgresql import PostgreSQLSpool

    with scratch_database(admin_dsn) as dsn:
        spool = PostgreSQLSpool(dsn)
        spool.open("exclusive")
        try:
            empty_table, empty_indexes, empty_db = pg_sizes(dsn)
            took = asyncio.run(keep(spool, count))
            table, indexes, database = pg_sizes(dsn)
            pruned = asyncio.run(prune(spool))
        finally:
            spool.close()
    return {
        "backend": "postgresql",
        "events_table_bytes": table - empty_table,
        "events_index_bytes": indexes - empty_indexes,
        "database_bytes": database - empty_db,
        "bytes_per_event": round((table - empty_table) / count, 1),
        "database_bytes_per_event": round((database - empty_db) / count, 1),
        "store_and_deliver_seconds": round(took, 1),
        **pruned,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("ROUTER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL user who may CREATE DATABASE (a scratch one is made and dropped)",
    )
    args = parser.parse_args()
    sizes = [len(body) for _, body in bodies()]
    common = {
        "at": utc_now(),
        "events": args.events,
        "example_body_bytes": {"mean": round(statistics.mean(sizes)), "min": min(sizes), "max": max(sizes)},
        "machine": machine(),
    }
    for backend in args.backends.split(","):
        result = run_sqlite(args.events) if backend == "sqlite" else run_postgresql(args.events, args.dsn)
        result["per_million_kept_gb"] = round(result["bytes_per_event"] * 1e6 / 1e9, 2)
        print(json.dumps({**common, **result}), flush=True)


if __name__ == "__main__":
    main()
