"""Input `redis`: the Connector's RedisConnector PUBLISHes each event on the channel `<namespace>` with the
compact JSON of its data as message (`{}` for events without data).

Mode `pubsub` (default) subscribes to those channels; mode `stream` reads a stream through a consumer
group instead, the durable option (see `stream`). Either way the router starts while Redis is down and
connects as soon as it can, with backoff; `is_ready()` says whether it is connected.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.abc import TaskStatus

from event_router.api import (
    Backoff,
    BatchStore,
    EventSink,
    Input,
    PluginContext,
    Readiness,
    scrub,
    started_once,
    url_secrets,
)
from event_router_redis.settings import CONFIG_SCHEMA, parse_settings

# redis-py is imported in the methods that connect: routers without Redis skip its memory and start-up cost

_CONNECT_TIMEOUT = 10.0
#: a peer that vanished without closing the connection is noticed within about a minute
_KEEPALIVE = {
    opt: value
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))
    if (opt := getattr(socket, name, None)) is not None
}


class RedisInput(Input):
    """Subscribes to the Connector's Redis channels, or reads a stream of its events (`type = "redis"`)."""

    type_name = "redis"
    config_schema = CONFIG_SCHEMA

    def __init__(self, config: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(config, context)
        self.settings = parse_settings(config, self.name)
        self._reconnect = Backoff.reconnect(self.settings.reconnect_max)
        self._readiness = Readiness(f"connecting to {self.settings.display}: no answer yet")
        self._connected = False
        self._started: Callable[[], None] = lambda: None

    def is_ready(self) -> bool:
        return self._readiness.ready

    def not_ready_reason(self) -> str | None:
        return self._readiness.reason()

    def guarantee(self) -> str:
        if self.settings.mode == "stream":
            # the Connector only PUBLISHes (enmeshed-events.md 3.4): whatever XADDs its events is a subscriber
            return (
                "Redis stream + XACK after storing: at least once from the stream; the Connector only PUBLISHes, "
                "what writes the stream decides what is in it"
            )
        return "Redis pub/sub: at most once; lost while the router is not subscribed or too slow"

    async def run(self, sink: EventSink, *, task_status: TaskStatus[None]) -> None:
        # Started once subscribed (every PSUBSCRIBE confirmed) or the consumer group exists: before, what the
        # Connector publishes to a channel is dropped. The router serves its other inputs meanwhile.
        self._started = started_once(task_status)
        from redis.exceptions import AuthenticationError, RedisError

        from event_router_redis.stream import GroupMissing

        store = BatchStore(sink, self.log, self.settings.batch_size)
        while True:
            self._connected = False
            try:
                await self._session(store)
                error = "the connection ended"
            except GroupMissing as exc:
                error = str(exc)
            except AuthenticationError as exc:
                error = f"{_describe(exc)}: check the user and password in url"
            except (RedisError, OSError) as exc:
                error = _describe(exc)
            except Exception as exc:  # a bug must not end the input; a stream keeps what is not acknowledged
                error = _describe(exc)
                self.log.exception("unexpected error in the Redis input", extra={"redis": self.settings.display})
            finally:
                self._readiness.stopped()
            delay = self._reconnect.failed()
            what = "lost the connection to Redis; reconnecting" if self._connected else "cannot read from Redis"
            # error texts should not hold the password; if a library put it there anyway, it is cut out
            error = scrub(error, url_secrets(self.settings.url))
            self._readiness.failed(f"{what}: {error}")
            self.log.warning(
                what,
                extra={
                    "redis": self.settings.display,
                    "mode": self.settings.mode,
                    "error": error,
                    "attempt": self._reconnect.attempt,
                    "retry_in": round(delay, 2),
                },
            )
            await anyio.sleep(delay)

    async def _session(self, store: BatchStore) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        from event_router_redis.pubsub import PubSubReader
        from event_router_redis.stream import StreamReader

        s = self.settings
        client = Redis.from_url(
            s.url,
            # reconnecting is this input's job: it logs, reports readiness and backs off
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=_CONNECT_TIMEOUT,
            # a blocking XREADGROUP answers within `block`; anything much slower is a stalled server
            socket_timeout=s.block + 30.0 if s.mode == "stream" else 30.0,
            socket_keepalive=True,
            socket_keepalive_options=_KEEPALIVE,
            client_name=f"event-router-{self.name}",
        )
        try:
            if s.mode == "stream":
                await StreamReader(s, self.name, store, self.log).run(client, self._on_ready)
            else:
                await PubSubReader(s, self.name, store).run(client, self._on_ready)
        finally:
            self._readiness.stopped()
            with anyio.move_on_after(5, shield=True):
                await client.aclose()

    def _on_ready(self) -> None:
        s = self.settings
        self._connected = True
        self._readiness.consuming()
        self._reconnect.healthy()
        if s.mode == "stream":
            self.log.info(
                "reading the Redis stream",
                extra={"redis": s.display, "stream": s.stream, "group": s.group, "consumer": s.consumer},
            )
        else:
            self.log.info("subscribed to Redis channels", extra={"redis": s.display, "patterns": list(s.patterns)})
        self._started()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
