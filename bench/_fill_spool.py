"""Fill a router's spool with COUNT pending events, through `Spool.store` exactly as the pipeline calls it.

    python bench/_fill_spool.py SPOOL_DB COUNT OUTPUT ROUTE

Each event is a fresh `Event` (own UUIDv7 id) of the example transport.messageReceived webhook body, stored
as a `StoreEvent` with one delivery to OUTPUT, in batches of 2,000 with a few batches in flight so group
commits combine them. Prints {"stored": n, "seconds": s}.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import example_body

from event_router.api.event import Event
from event_router.core.spool import NewDelivery, StoreEvent
from event_router.core.spool.sqlite import SQLiteSpool

BATCH = 2000
IN_FLIGHT = 4


async def fill(path: Path, count: int, output: str, route: str) -> int:
    body = orjson.loads(example_body(1200))
    meta = {"headers": {"content-type": "application/json"}, "remote": "127.0.0.1", "path": "/events"}
    spool = SQLiteSpool(path)
    spool.open()
    stored = 0
    try:
        pending: set[asyncio.Task[object]] = set()
        while stored < count:
            n = min(BATCH, count - stored)
            items = []
            for _ in range(n):
                event = Event(trigger=body["trigger"], data=body["data"], source="connector", meta=meta)
                items.append(
                    StoreEvent(
                        event_id=event.id,
                        trigger=event.trigger,
                        body=event.to_json(),
                        deliveries=[NewDelivery(output, route, None)],
                    )
                )
            pending.add(asyncio.create_task(spool.store(items)))
            stored += n
            if len(pending) >= IN_FLIGHT:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
        for task in pending:
            await task
    finally:
        spool.close()
    return stored


def main() -> None:
    path, count, output, route = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    started = time.monotonic()
    stored = asyncio.run(fill(path, count, output, route))
    print(orjson.dumps({"stored": stored, "seconds": round(time.monotonic() - started, 2)}).decode())


if __name__ == "__main__":
    main()
