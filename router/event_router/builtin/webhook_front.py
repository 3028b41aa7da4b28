"""A webhook front process (`processes = N` in a webhook input): speaks HTTP, and nothing else.

It accepts on the listening socket the router process opened and handed down, reads each POST (bounded by
`max_body_bytes`) and forwards it over its channel, a Unix socket pair, to the router process, which runs
every check (allow-list, rate limit, API key, signature, replay), decodes, validates, stores and sends back
the answer. So no secret ever reaches this process, there is one implementation of each check, and the
answer a client gets means exactly what it means without front processes: 2xx only once the event is on
disk. What runs here is the per-request cost of HTTP, which is most of the router's CPU per webhook event;
in its own process it runs on another core.

Started by `event_router.builtin.webhook_fronts` as `python -m event_router.builtin.webhook_front`, with
its settings as JSON on stdin. Stops when told to (a STOP frame: stop accepting, finish the requests in
progress, say DONE) or when the router process is gone (end of the channel: requests in progress get 503,
as nothing can store them). SIGTERM, SIGINT and SIGHUP are the router process's business, not this one's:
under systemd the whole control group gets SIGTERM, and the router stops its fronts in order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import signal
import socket
import ssl
import struct
import sys
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from event_router.frames import FrameChannel, encode
from event_router.logs import setup_logging
from event_router.runtime import freeze_startup_heap

#: child -> router: the server accepts (READY), a request (REQUEST), drained and exiting (DONE)
READY, REQUEST, DONE = b"R", b"Q", b"D"
#: router -> child: the answer to a request (ANSWER), stop accepting and drain (STOP)
ANSWER, STOP = b"A", b"S"
#: REQUEST payload: meta length, meta JSON, body; ANSWER payload: status, headers length, headers JSON, body
REQUEST_HEAD = struct.Struct("!I")
ANSWER_HEAD = struct.Struct("!HI")

log = logging.getLogger("event_router.webhook_front")
_GONE = orjson.dumps({"error": "the router cannot store events right now"})


def tls_context(tls: Mapping[str, str]) -> ssl.SSLContext:
    """The listener's TLS context from the input's `tls` table, its paths absolute (`WebhookInput.tls_paths`)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls["cert_file"], tls["key_file"])
    if "client_ca_file" in tls:
        ctx.load_verify_locations(tls["client_ca_file"])
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _Channel(FrameChannel):
    """This process's end of the channel: requests out, answers in."""

    def __init__(self) -> None:
        super().__init__(log)
        self.waiting: dict[int, asyncio.Future[tuple[int, dict[str, str], bytes]]] = {}
        self.ids = itertools.count(1)
        self.stop = asyncio.Event()

    def on_frame(self, kind: int, rid: int, payload: bytes) -> None:
        if kind == ANSWER[0]:
            future = self.waiting.pop(rid, None)
            if future is not None and not future.done():
                status, size = ANSWER_HEAD.unpack_from(payload)
                start = ANSWER_HEAD.size
                headers = orjson.loads(payload[start : start + size]) if size else {}
                future.set_result((status, headers, payload[start + size :]))
        elif kind == STOP[0]:
            self.stop.set()

    def connection_lost(self, exc: Exception | None) -> None:
        # the router process is gone: nothing can store these events, so none of them may get a 2xx
        for future in self.waiting.values():
            if not future.done():
                future.set_result((503, {"Retry-After": "5"}, _GONE))
        self.waiting.clear()
        self.stop.set()

    async def ask(self, meta: bytes, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.stop.is_set() and not self.open:
            return 503, {"Retry-After": "5"}, _GONE
        rid = next(self.ids) & 0xFFFFFFFF
        future: asyncio.Future[tuple[int, dict[str, str], bytes]] = asyncio.get_running_loop().create_future()
        self.waiting[rid] = future
        self.send(encode(REQUEST, rid, REQUEST_HEAD.pack(len(meta)), meta, body))
        return await future


def path_pattern(path: str) -> re.Pattern[str]:
    """The input's `path` as aiohttp's router matches it: `{trigger}` is one segment (`[^{}/]+`)."""
    parts = re.split(r"(\{trigger\})", path)
    return re.compile("".join("(?P<trigger>[^{}/]+)" if part == "{trigger}" else re.escape(part) for part in parts))


def _handler(channel: _Channel, path: str, max_body: int) -> Any:
    pattern = path_pattern(path)
    too_large = orjson.dumps({"error": f"body larger than {max_body} bytes"})

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        # aiohttp's low-level server (no application, router or middlewares: ~9 us less per request
        # here): the routing and the 100-continue the application would do, done by hand
        match = pattern.fullmatch(request.rel_url.path)
        if match is None:
            return web.Response(status=404, text="404: Not Found")
        if request.method != "POST":
            return web.Response(status=405, text="405: Method Not Allowed", headers={"Allow": "POST"})
        if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413, body=too_large, content_type="application/json")
        headers: dict[str, str] = {}
        for name, value in request.headers.items():  # the first of repeated headers, as headers.get gives
            headers.setdefault(name.lower(), value)
        trigger = match.groupdict().get("trigger")
        meta = orjson.dumps({"r": request.remote, "h": headers, "p": request.path, "t": trigger})
        status, headers, body = await channel.ask(meta, raw)
        return web.Response(status=status, body=body, content_type="application/json", headers=headers or None)

    return handle


async def serve(settings: Mapping[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    channel = _Channel()
    await loop.connect_accepted_socket(lambda: channel, socket.socket(fileno=settings["channel_fd"]))
    listener = socket.socket(fileno=settings["listen_fd"])
    max_body = settings["max_body"]

    def request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=max_body)

    server = web.Server(_handler(channel, settings["path"], max_body), request_factory=request, access_log=None)
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=settings["drain_seconds"])
    await runner.setup()
    tls = settings.get("tls")
    site = web.SockSite(runner, listener, ssl_context=tls_context(tls) if tls else None)
    await site.start()
    freeze_startup_heap()
    channel.send(encode(READY, 0))
    await channel.stop.wait()
    # stops accepting, then lets requests in progress finish: their answers still come over the channel
    await runner.cleanup()
    channel.send(encode(DONE, 0))
    channel.close()


def main() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    settings = orjson.loads(sys.stdin.buffer.read() or b"null")
    if not isinstance(settings, dict):
        sys.exit("webhook front: no settings on stdin (it is started by the router, not by hand)")
    setup_logging(settings.get("log_level", "info"), settings.get("log_format", "auto"))
    try:
        import uvloop
    except ImportError:  # optional: the stdlib loop works, only slower
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
