"""For input plugins: store what one read returned (dead letters once, events in parts small enough for a
nearly full spool), holding it unacknowledged while the spool is full and never dropping it.

An input decodes what it read into `Event`s and `Rejected` items (`decode_event`), then calls
`BatchStore.store` with a callback that acknowledges each stored part at the source: the one
"spool full -> wait -> store again" loop of every broker input.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import orjson

from event_router.api.errors import SpoolError, SpoolFull
from event_router.api.event import Event
from event_router.api.plugin import EventSink, SubmitResult


class Rejected:
    """Something read that cannot become an event: kept as a dead letter, then acknowledged like an event."""

    __slots__ = ("kept", "meta", "payload", "reason", "trigger")

    def __init__(self, payload: bytes, reason: str, trigger: str | None, meta: dict[str, Any]):
        self.kept = False
        self.payload = payload
        self.reason = reason
        self.trigger = trigger
        self.meta = meta


Item = Event | Rejected
#: failures of the spool or the machine, not of one event: they fail every event alike
_NOT_THE_EVENT = (SpoolFull, SpoolError, OSError)
#: called with (start, end) once items[start:end] are stored: acknowledge them
Stored = Callable[[int, int], Awaitable[Any]]
#: called with `start` after each wait for room in the spool: items[start:] are still held
Waiting = Callable[[int], Awaitable[Any]]


class BatchStore:
    """Hands items to the sink, holding them (never dropping them) while the spool is full.

    `store(items, stored, waiting)` returns once every item is stored (with what became of each event, in
    order: `SubmitResult`s, one an event the core failed on is kept as a dead letter): `await stored(start, end)` right
    after `items[start:end]` are (acknowledge them at the source there, and only there); while the spool is
    full it sleeps the `SpoolFull.retry_after` the core asks for, calls `await waiting(start)` (check the
    connection still holds the rest, extend a lease...) and submits again, in parts that halve until one
    fits. An exception from either callback ends `store` with what is not stored still unacknowledged.
    `context` is added to its log lines (the queue, the subscription...).
    """

    def __init__(self, sink: EventSink, log: logging.Logger, batch_size: int, context: Mapping[str, Any] | None = None):
        self.sink = sink
        self.log = log
        self.batch_size = batch_size
        self.context: dict[str, Any] = dict(context or {})
        #: items per submit; halves on SpoolFull so a batch larger than the room left still goes in
        self._part = batch_size

    async def store(
        self, items: Sequence[Item], stored: Stored | None = None, waiting: Waiting | None = None
    ) -> list[SubmitResult]:
        start = 0
        paused = False
        #: what became of the events already stored, by id(event) (a part may be submitted again in pieces)
        done: dict[int, SubmitResult] = {}
        while start < len(items):
            end = min(len(items), start + self._part)
            try:
                # shielded: once stored, the part is acknowledged even if the router is told to stop meanwhile
                with anyio.CancelScope(shield=True):
                    await self._store_part(items[start:end], done)
                    if stored is not None:
                        await stored(start, end)
            except SpoolFull as full:
                self._part = max(1, (end - start) // 2)
                if not paused:
                    self.log.warning(
                        "spool full: holding what was read, unacknowledged, until it has room",
                        extra={**self.context, "held": len(items) - start, "retry_in": full.retry_after},
                    )
                paused = True
                await anyio.sleep(full.retry_after)
                if waiting is not None:
                    await waiting(start)
                continue
            start = end
            self._part = min(self.batch_size, self._part * 2)
        if paused:
            self.log.info("spool has room again: reading", extra={**self.context, "stored": len(items)})
        return [done[id(item)] for item in items if isinstance(item, Event)]

    async def store_now(self, items: Sequence[Item]) -> None:
        """One attempt, no waiting (e.g. on the way out): `SpoolFull` reaches the caller."""
        await self._store_part(items, {})

    async def _store_part(self, items: Sequence[Item], done: dict[int, SubmitResult]) -> None:
        for item in items:
            if isinstance(item, Rejected) and not item.kept:
                await self.sink.reject(item.payload, item.reason, trigger=item.trigger, meta=item.meta)
                item.kept = True  # a full spool may send the part round again: keep each dead letter once
        events = [item for item in items if isinstance(item, Event) and id(item) not in done]
        if events:
            await self._submit(events, done)

    async def _submit(self, events: Sequence[Event], done: dict[int, SubmitResult]) -> None:
        """Submit `events`. When the core fails on one of them (not the spool: that fails every event),
        that one is kept as a dead letter, so it cannot fail its batch, and be read again, forever."""
        try:
            results = await self.sink.submit(events)
        except _NOT_THE_EVENT:
            raise
        except Exception as exc:
            if len(events) > 1:
                for event in events:  # one at a time, to find the event it fails on
                    await self._submit([event], done)
                return
            done[id(events[0])] = await self._keep_failed(events[0], exc)
            return
        done.update((id(e), r) for e, r in zip(events, results, strict=True))

    async def _keep_failed(self, event: Event, exc: Exception) -> SubmitResult:
        error = f"{type(exc).__name__}: {exc}"
        self.log.error(
            "the router failed on an event; keeping it as a dead letter",
            exc_info=exc,
            extra={**self.context, "trigger": event.trigger, "error": error},
        )
        raw = event.raw if event.raw is not None else orjson.dumps(event.data)
        why = f"the router failed on this event: {error}"
        dlid = await self.sink.reject(raw, why, trigger=event.trigger, meta=event.meta)
        return SubmitResult(event.id, "dead_lettered", (why,), dlid)
