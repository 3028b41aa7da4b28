"""Mode `stream`: read a Redis stream through a consumer group, XACK each entry only once it is stored.

The durable option, for deployments where something XADDs the Connector's events to a stream (a bridge:
the Connector itself only PUBLISHes). An entry carries the fields `trigger` (or `namespace`) and `data`
(the JSON of the event's data; absent or empty for events without data). Entries read but never
acknowledged (a router killed mid-batch) stay pending in the group: this consumer reads its own again at
start, and claims other consumers' once they have been idle for `claim_idle`. An entry delivered more
than `max_deliveries` times becomes a dead letter instead of looping forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from event_router.api import BatchStore, Item, decode_event
from event_router_redis.settings import Settings

_TRIGGER_FIELDS = (b"trigger", b"namespace")


class GroupMissing(Exception):
    """The stream or its consumer group is not there (and the input may not create it)."""


class StreamReader:
    """One consumer of the group: own pending entries first, then new ones, claiming abandoned ones."""

    def __init__(self, settings: Settings, source: str, store: BatchStore, log: logging.Logger):
        self.settings = settings
        self.source = source
        self.store = store
        self.log = log
        self._claim_ms = max(1, int(settings.claim_idle * 1000))
        self._claim_every = max(0.05, settings.claim_idle / 2)

    async def run(self, client: Redis, ready: Callable[[], None]) -> None:
        s = self.settings
        await self._ensure_group(client)
        ready()
        try:
            # A restart under a stable `consumer` name finds its unacknowledged entries here at once.
            await self._own_pending(client)
            next_claim = 0.0
            while True:
                if anyio.current_time() >= next_claim:
                    await self._claim(client)
                    next_claim = anyio.current_time() + self._claim_every
                # RESP2 replies; redis-py types them as the union of RESP2 and RESP3 shapes
                reply: Any = await client.xreadgroup(
                    s.group, s.consumer, {s.stream: ">"}, count=s.batch_size, block=max(1, int(s.block * 1000))
                )
                for _key, entries in reply or []:
                    if entries:
                        await self._handle(client, entries, redelivered=False)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                raise GroupMissing(self._missing()) from None
            raise

    async def _ensure_group(self, client: Redis) -> None:
        s = self.settings
        if s.create_group:
            try:
                # from the start of the stream: entries added before the group existed are read too
                await client.xgroup_create(s.stream, s.group, id="0", mkstream=True)
                self.log.info("created the consumer group", extra={"stream": s.stream, "group": s.group})
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            return
        try:
            groups: Any = await client.xinfo_groups(s.stream)
        except ResponseError:
            raise GroupMissing(self._missing()) from None
        if not any(_text(g.get("name")) == s.group for g in groups):
            raise GroupMissing(self._missing())

    def _missing(self) -> str:
        s = self.settings
        return (
            f"stream {s.stream!r} has no consumer group {s.group!r}: create it "
            f"(XGROUP CREATE {s.stream} {s.group} 0 MKSTREAM) or set create_group = true"
        )

    async def _own_pending(self, client: Redis) -> None:
        s = self.settings
        cursor: bytes | str = "0"
        while True:
            reply: Any = await client.xreadgroup(s.group, s.consumer, {s.stream: cursor}, count=s.batch_size)
            entries = reply[0][1] if reply else []
            if not entries:
                return
            self.log.info("reading entries this consumer left unacknowledged", extra={"count": len(entries)})
            await self._handle(client, entries, redelivered=True)
            cursor = entries[-1][0]

    async def _claim(self, client: Redis) -> None:
        """Take over entries pending longer than `claim_idle` at consumers that stopped (XAUTOCLAIM)."""
        s = self.settings
        cursor: bytes | str = "0-0"
        while True:
            reply: Any = await client.xautoclaim(
                s.stream, s.group, s.consumer, min_idle_time=self._claim_ms, start_id=cursor, count=s.batch_size
            )
            cursor, entries = reply[0], reply[1]
            if entries:
                self.log.info(
                    "claimed entries another consumer left unacknowledged",
                    extra={"count": len(entries), "idle_over": s.claim_idle},
                )
                await self._handle(client, entries, redelivered=True)
            if _text(cursor) == "0-0":
                return

    async def _handle(
        self, client: Redis, entries: Sequence[tuple[bytes, dict[bytes, bytes]]], redelivered: bool
    ) -> None:
        s = self.settings
        counts = await self._deliveries(client, [e[0] for e in entries]) if redelivered else {}
        items: list[Item] = []
        ids: list[bytes] = []
        gone: list[bytes] = []
        for entry_id, fields in entries:
            if not fields:  # deleted from the stream (XDEL, trimming) while pending: nothing left to store
                gone.append(entry_id)
                continue
            items.append(self._decode(entry_id, fields, counts.get(entry_id, 1)))
            ids.append(entry_id)
        if gone:
            await client.xack(s.stream, s.group, *gone)
            self.log.warning(
                "pending entries were deleted from the stream before they were stored",
                extra={"ids": [_text(i) for i in gone]},
            )

        async def stored(start: int, end: int) -> None:
            await client.xack(s.stream, s.group, *ids[start:end])

        async def waiting(start: int) -> None:
            # Claiming them again resets their idle time: no other consumer takes them while we wait.
            held: list[Any] = ids[start:]
            await client.xclaim(s.stream, s.group, s.consumer, 0, held, justid=True)

        await self.store.store(items, stored, waiting)

    async def _deliveries(self, client: Redis, ids: Sequence[bytes]) -> dict[bytes, int]:
        """How often each of `ids` (pending at this consumer) has been delivered, this time included."""
        ordered = sorted(ids, key=_id_key)
        rows: Any = await client.xpending_range(
            self.settings.stream,
            self.settings.group,
            ordered[0],
            ordered[-1],
            len(ids) * 2 + 10,
            consumername=self.settings.consumer,
        )
        return {row["message_id"]: int(row["times_delivered"]) for row in rows}

    def _decode(self, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int) -> Item:
        text = {_text(k): _text(v) for k, v in fields.items()}
        raw = orjson.dumps(text)
        meta: dict[str, Any] = {"stream": self.settings.stream, "entry_id": _text(entry_id), "deliveries": deliveries}
        extra = {k: v for k, v in text.items() if k not in ("trigger", "namespace", "data")}
        if extra:
            meta["fields"] = extra
        trigger_raw = next((fields[f] for f in _TRIGGER_FIELDS if fields.get(f)), None)
        payload = fields.get(b"data") or b""
        limit = self.settings.max_deliveries
        trigger: str | None = None
        refuse: str | None = None
        if deliveries > limit:
            refuse = f"delivered {deliveries} times without being acknowledged (max_deliveries = {limit})"
            trigger = _text(trigger_raw) if trigger_raw else None
        elif trigger_raw is None:
            refuse = 'entry has no "trigger" (or "namespace") field naming the Connector event'
        else:
            try:
                trigger = trigger_raw.decode("utf-8")
            except UnicodeDecodeError:
                refuse = "the trigger field is not UTF-8"
        return decode_event(
            trigger, payload, source=self.source, meta=meta, refuse=refuse, what='field "data"', keep=raw
        )


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)
