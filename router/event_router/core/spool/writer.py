"""What every spool backend's writer thread shares, and no SQL: the queued write (`Op`), gathering a group
of them for one transaction (`gather`) and settling their futures once it is committed (`resolve_all`).

A backend applies a group in one transaction and commits once: under load one commit (one fsync, on
PostgreSQL one WAL flush) covers many events, at low load an event waits for nothing but its own commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Op:
    #: applies the write to the backend's connection, inside the group's transaction
    apply: Callable[[Any], Any]
    loop: asyncio.AbstractEventLoop | None
    #: asyncio future (settled on `loop`) for the daemon, concurrent future for the CLI
    future: asyncio.Future[Any] | concurrent.futures.Future[Any]
    #: may wait up to the backend's LAZY_DELAY for company: nothing acknowledges a source on this commit
    lazy: bool = False
    #: the (output, ordering key) pairs whose pending deliveries the write adds to or finishes: a backend
    #: that several routers write at once serialises the groups touching one pair (PostgreSQL's advisory
    #: locks, taken for the whole group, in one order, before any op applies)
    keys: frozenset[tuple[str, str]] = frozenset()


def gather(ops: queue.SimpleQueue[Op | None], batch: list[Op], *, max_group: int, lazy_delay: float) -> bool:
    """Add the writes queued behind `batch[0]` to its group; False once asked to stop (a None queued).

    A group of lazy writes only (delivery outcomes) waits up to `lazy_delay` for more: at a steady rate
    they then ride along with the next store's commit instead of costing a commit each. Losing them in a
    crash only means a repeated delivery.
    """
    eager = not batch[0].lazy
    deadline = time.monotonic() + lazy_delay
    while len(batch) < max_group:
        try:
            op = ops.get_nowait() if eager else ops.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return True
        if op is None:
            return False
        batch.append(op)
        eager = eager or not op.lazy
    return True


def resolve_all(outcomes: list[tuple[Op, Any, BaseException | None]]) -> None:
    """Settle every op of a group: one call into each waiting event loop, not one per op."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
    for op, result, error in outcomes:
        future = op.future
        if isinstance(future, concurrent.futures.Future):  # the CLI's synchronous writes
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
            continue
        assert op.loop is not None
        by_loop.setdefault(op.loop, []).append((future, result, error))
    for loop, items in by_loop.items():
        # a closed loop means nobody is waiting any more
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle_futures, items)


def _settle_futures(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in items:
        if future.done():  # the awaiting task was cancelled; the write happened (or not) all the same
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
