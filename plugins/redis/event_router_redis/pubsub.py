"""Mode `pubsub`: PSUBSCRIBE to the Connector's channels, as its RedisConnector PUBLISHes to them.

Redis keeps nothing for a subscriber: a message published while this input is not connected (router
stopped, restarting, reconnecting) reaches nobody and is gone. Use mode `stream` where that matters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from event_router.api import BatchStore, Item, decode_event
from event_router_redis.settings import Settings

#: how long Redis may take to confirm the subscriptions
_CONFIRM_TIMEOUT = 10.0


class PubSubReader:
    """Reads published messages in batches: one blocking read, then whatever else already arrived."""

    def __init__(self, settings: Settings, source: str, store: BatchStore):
        self.settings = settings
        self.source = source
        self.store = store

    async def run(self, client: Redis, ready: Callable[[], None]) -> None:
        pubsub = client.pubsub()
        try:
            early = await self._subscribe(pubsub)
            ready()
            if early:
                await self.store.store([self.decode(m) for m in early])
            while True:
                first = await pubsub.get_message(timeout=None)
                batch = [first]
                while len(batch) < self.settings.batch_size:
                    more = await pubsub.get_message(timeout=0)
                    if more is None:
                        break
                    batch.append(more)
                items = [self.decode(m) for m in batch if m is not None and m["type"] == "pmessage"]
                if items:
                    await self.store.store(items)
        finally:
            with anyio.move_on_after(5, shield=True):
                await pubsub.aclose()

    async def _subscribe(self, pubsub: PubSub) -> list[dict[str, Any]]:
        """PSUBSCRIBE and wait until Redis confirms every pattern; returns messages that came meanwhile."""
        await pubsub.psubscribe(*self.settings.patterns)
        confirmed = 0
        early: list[dict[str, Any]] = []
        with anyio.fail_after(_CONFIRM_TIMEOUT):
            while confirmed < len(self.settings.patterns):
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                if message["type"] == "psubscribe":
                    confirmed += 1
                elif message["type"] == "pmessage":
                    early.append(message)
        return early

    def decode(self, message: dict[str, Any]) -> Item:
        channel: bytes = message["channel"]
        payload: bytes = message["data"] if isinstance(message["data"], bytes) else str(message["data"]).encode()
        pattern = message.get("pattern")
        meta: dict[str, Any] = {
            "channel": channel.decode("utf-8", "backslashreplace"),
            "pattern": pattern.decode("utf-8", "backslashreplace") if isinstance(pattern, bytes) else pattern,
        }
        try:
            trigger = channel.decode("utf-8")
        except UnicodeDecodeError:
            refuse = "channel name is not UTF-8: it names no Connector event"
            return decode_event(None, payload, source=self.source, meta=meta, refuse=refuse)
        if not trigger:  # PUBLISH "" reaches a pattern such as `*`
            refuse = "channel name is empty: it names no Connector event"
            return decode_event(None, payload, source=self.source, meta=meta, refuse=refuse)
        return decode_event(trigger, payload, source=self.source, meta=meta, what="message")
