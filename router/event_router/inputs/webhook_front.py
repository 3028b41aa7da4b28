"""A webhook front process (`processes = N` in a webhook input): speaks HTTP, and nothing else.

It accepts on the listening socket the router process opened and handed down, reads each POST (bounded by
`max_body_bytes`) and forwards it over its channel, a Unix socket pair, to the router process, which runs
every check (allow-list, rate limit, API key, signature, replay), decodes, validates, stores and sends back
the answer. So no secret ever reaches this process, there is one implementation of each check, and the
answer a client gets means exactly what it means without front processes: 2xx only once the event is on
disk. What runs here is the per-request cost of HTTP, which is most of the router's CPU per webhook event;
in its own process it runs on another core.

Started by `event_router.inputs.webhook_fronts` as `python -m event_router.inputs.webhook_front`, with
its settings as JSON on stdin. Stops when told to (a STOP frame: stop accepting, finish the requests in
progress, say DONE) or when the router process is gone (end of the channel: requests in progress get 503,
as nothing can store them). SIGTERM, SIGINT and SIGHUP are the router process's business, not this one's:
under systemd the whole control group gets SIGTERM, and the router stops its fronts in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import re
import signal
import socket
import ssl
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

import httptools
import orjson

from event_router.inputs.frames import FrameChannel, encode
from event_router.ops.logs import setup_logging
from event_router.runtime import freeze_startup_heap

#: child -> router: the server accepts (READY), a request (REQUEST), drained and exiting (DONE), a request
#: this process refused itself (REFUSED: counted and logged by the router, like the ones it refuses), the
#: process reached max_connections (FULL, payload b"1") or is below it again (FULL, payload b"0")
READY, REQUEST, DONE, REFUSED, FULL = b"R", b"Q", b"D", b"F", b"L"
#: router -> child: the answer to a request (ANSWER), stop accepting and drain (STOP)
ANSWER, STOP = b"A", b"S"
#: REQUEST and REFUSED payload: meta length, meta JSON, body; ANSWER payload: status, headers length, headers JSON, body
REQUEST_HEAD = struct.Struct("!I")
ANSWER_HEAD = struct.Struct("!HI")

log = logging.getLogger("event_router.webhook_front")
#: the answer to a request the router process can no longer store (it is gone, or going)
_GONE: tuple[int, dict[str, str], bytes] = (
    503,
    {"Retry-After": "5"},
    orjson.dumps({"error": "the router cannot store events right now"}),
)
_NOT_POST = orjson.dumps({"error": "only POST is accepted here"})
#: limits aiohttp applies in the router process, applied here too: one line (the request target), the
#: request line and headers together
MAX_LINE = 8190
MAX_HEAD = 32768
#: a connection with no request waiting for its answer is closed after this long without a byte (as
#: aiohttp's keep-alive timeout)
IDLE_SECONDS = 75.0
#: how often deadlines (idle, header_timeout, body_timeout) are checked: they fire up to this much late
SWEEP_SECONDS = 1.0
#: how long a connection closing after a refused request still takes (and drops) what the client sends
LINGER_SECONDS = 2.0
#: requests of one connection waiting for their answers before reading from it pauses
MAX_PIPELINED = 32
#: answers written but not yet taken by the client before reading from its connection pauses (a client
#: that pipelines requests and never reads the answers holds at most this much, plus one read, here)
WRITE_HIGH = 256 * 1024
#: request bodies read at once in this process, over all connections: max(BUFFER_BUDGET, 4 x
#: max_body_bytes). A body is read once its size (Content-Length, or max_body_bytes when chunked) fits in
#: what is left; until then reading from its connection pauses (the read that held its head may hold the
#: body's first bytes: they are kept). Bodies are admitted in arrival order, and one whatever its size
#: when none is being read, so every body is read in the end (or ended by body_timeout)
BUFFER_BUDGET = 64 * 1024 * 1024


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
        self.waiting: dict[int, Callable[[int, dict[str, str], bytes], None]] = {}
        self.ids = itertools.count(1)
        self.stop = asyncio.Event()

    def on_frame(self, kind: int, rid: int, payload: bytes) -> None:
        if kind == ANSWER[0]:
            reply = self.waiting.pop(rid, None)
            if reply is not None:
                status, size = ANSWER_HEAD.unpack_from(payload)
                start = ANSWER_HEAD.size
                headers = orjson.loads(payload[start : start + size]) if size else {}
                try:
                    reply(status, headers, payload[start + size :])
                except Exception:  # one connection's failure must not take the channel every other one uses
                    log.exception("webhook front failed to answer a request")
        elif kind == STOP[0]:
            self.stop.set()

    def connection_lost(self, exc: Exception | None) -> None:
        # the router process is gone: nothing can store these events, so none of them may get a 2xx
        waiting, self.waiting = self.waiting, {}
        for reply in waiting.values():
            reply(*_GONE)
        self.stop.set()

    def ask(self, meta: bytes, body: bytes, reply: Callable[[int, dict[str, str], bytes], None]) -> None:
        """Forward one request; `reply` gets the router's answer (or a 503 if the router is gone)."""
        if not self.open:
            reply(*_GONE)
            return
        rid = next(self.ids) & 0xFFFFFFFF
        self.waiting[rid] = reply
        self.send(encode(REQUEST, rid, REQUEST_HEAD.pack(len(meta)), meta, body))

    def send_full(self, full: bool) -> None:
        if self.open:
            self.send(encode(FULL, 0, b"1" if full else b"0"))

    def refused(self, status: int, remote: str, body: bytes) -> None:
        """Tell the router about a request answered here with an error (`body`: the JSON answer)."""
        if self.open:
            meta = orjson.dumps({"s": status, "r": remote})
            self.send(encode(REFUSED, 0, REQUEST_HEAD.pack(len(meta)), meta, body))


def path_pattern(path: str) -> re.Pattern[str]:
    """The input's `path` as aiohttp's router matches it: `{trigger}` is one segment (`[^{}/]+`)."""
    parts = re.split(r"(\{trigger\})", path)
    return re.compile("".join("(?P<trigger>[^{}/]+)" if part == "{trigger}" else re.escape(part) for part in parts))


class _Refused(Exception):
    """A request this process answers itself and then closes the connection on (it cannot read on)."""

    def __init__(self, status: int, error: str):
        super().__init__(error)
        self.status = status
        self.body = orjson.dumps({"error": error})


def response_head(status: int, length: int, headers: Mapping[str, str] | None, close: bool) -> bytes:
    """The status line and headers of a JSON answer of `length` bytes."""
    lines = [
        f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nDate: {_http_date()}\r\n"
    ]
    if headers:
        lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
    if close:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


@functools.cache  # once per status, not once per answer
def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


_date_cache: list[Any] = [0, ""]


def _http_date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, formatdate(now, usegmt=True)]
    return str(_date_cache[1])


class _Server:
    """What the connections of this process share: the channel, the path, the limits, the open connections."""

    def __init__(
        self,
        channel: _Channel,
        path: str,
        max_body: int,
        *,
        max_connections: int = 1000,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
    ):
        self.channel = channel
        self.pattern = path_pattern(path)
        self.max_body = max_body
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.connections: set[_Connection] = set()
        self.draining = False
        #: set once draining and no request waits for its answer
        self.drained = asyncio.Event()
        #: body bytes admitted for reading (the sizes of the bodies being read), and the budget for them
        self.reserved = 0
        self.budget = max(BUFFER_BUDGET, 4 * max_body)
        #: connections paused until their body fits in the budget, admitted oldest first
        self.starved: deque[_Connection] = deque()
        self.full = False

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than IDLE_SECONDS; refuse those past a header or body deadline."""
        for conn in list(self.connections):
            if conn.closing:
                continue
            if "writing" in conn.paused_for:  # a client that takes none of its answers for that long is gone
                if now - conn.last_active > IDLE_SECONDS:
                    conn.close()
                continue
            if conn.paused_for:  # paused by this process: the client is not the slow one
                continue
            if conn.phase == _HEAD and now - conn.phase_since > self.header_timeout:
                conn.refuse(_Refused(408, f"request head not received within {self.header_timeout:g} s"))
            elif conn.phase == _BODY and now - conn.phase_since > self.body_timeout:
                conn.refuse(_Refused(408, f"request body not received within {self.body_timeout:g} s"))
            elif conn.phase == _IDLE and not conn.answers and now - conn.last_active > IDLE_SECONDS:
                conn.close()

    def count_connections(self) -> None:
        """Tell the router when this process reaches max_connections, and when it is below it again."""
        full = len(self.connections) >= self.max_connections
        if full != self.full:
            self.full = full
            self.channel.send_full(full)

    def reserve(self, size: int) -> bool:
        """Admit a body of `size` bytes for reading if it fits (any one body fits when none is read)."""
        if self.reserved and self.reserved + size > self.budget:
            return False
        self.reserved += size
        return True

    def release(self, size: int) -> None:
        """A body of `size` bytes is no longer read: admit the waiting ones that fit now, oldest first."""
        self.reserved -= size
        while self.starved:
            conn = self.starved[0]
            if not self.reserve(conn.wanted):
                return
            self.starved.popleft()
            conn.held, conn.wanted = conn.wanted, 0
            conn.resume("budget")

    def drain(self) -> None:
        """From now on answers close their connections; `drained` is set once none is owed."""
        self.draining = True
        self.check_drained()

    def check_drained(self) -> None:
        if self.draining and not any(conn.answers for conn in self.connections):
            self.drained.set()


#: what a connection waits for: the next request (idle), the rest of a request head, the rest of a body
_IDLE, _HEAD, _BODY = 0, 1, 2


class _Connection(asyncio.Protocol):
    """One client connection: HTTP/1.1 parsed by llhttp (httptools), answers written in request order.

    A hand-written protocol rather than aiohttp's server: it does a quarter of the work per request
    (no request, response, header multidict or task objects), and per-request CPU here is what a front
    costs. What aiohttp enforced is enforced here: request line and headers at most MAX_HEAD bytes (431,
    counted as they stream in, not only once a line ends), the body at most max_body_bytes (413, before
    reading it when Content-Length says so), idle connections closed after IDLE_SECONDS, malformed
    requests answered 400 and the connection closed. And what it did not: a request head must arrive
    whole within header_timeout of its first byte, its body
    within body_timeout (408 otherwise); at most max_connections at once (503 past it); reading pauses
    while the client does not take its answers or while the bodies held in this process are over budget.
    """

    def __init__(self, server: _Server):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.remote = ""
        self.last_active = time.monotonic()
        #: one slot per request in arrival order: None until its answer is there
        self.answers: deque[list[bytes | None]] = deque()
        self.closing = False
        #: a request said it is the last (HTTP/1.0, `Connection: close`, or draining): close once it is answered
        self.last = False
        #: why reading is paused ("pipelined", "writing", "budget"): resumed once none is left
        self.paused_for: set[str] = set()
        self.phase = _IDLE
        self.phase_since = self.last_active
        #: head bytes received for the request in progress, counted as they arrive (`data_received`)
        self.head_bytes = 0
        #: heads completed on this connection
        self.heads = 0
        #: the size of this connection's body admitted for reading (`_Server.reserve`), or waiting to be
        self.held = 0
        self.wanted = 0
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.head_size = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.refusal: tuple[int, bytes, dict[str, str] | None] | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        server = self.server
        if len(server.connections) >= server.max_connections:
            # past the cap: a clear answer, not a connection that hangs or a file descriptor the process lacks
            self.closing = True
            refused = _Refused(503, f"too many connections (max_connections = {server.max_connections})")
            server.channel.refused(refused.status, self.remote, refused.body)
            self.transport.write(response_head(503, len(refused.body), {"Retry-After": "1"}, True) + refused.body)
            self.transport.close()
            return
        self.transport.set_write_buffer_limits(high=WRITE_HIGH)
        server.connections.add(self)
        server.count_connections()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self in self.server.connections:
            self.server.connections.discard(self)
            self._release()
            self.server.count_connections()
            self.server.check_drained()

    def pause_writing(self) -> None:
        self.pause("writing")

    def resume_writing(self) -> None:
        self.resume("writing")

    def pause(self, reason: str) -> None:
        self.paused_for.add(reason)
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self, reason: str) -> None:
        if reason not in self.paused_for:
            return
        self.paused_for.discard(reason)
        if not self.paused_for and not self.last and not self.closing and self.transport is not None:
            self.phase_since = time.monotonic()  # a deadline counts the client's time, not the pause
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.closing:
            return
        in_head = self.phase != _BODY
        heads = self.heads
        try:
            self.parser.feed_data(data)
            if self.phase == _HEAD:
                # llhttp hands a header over only once its line ends (httptools joins its pieces, at a
                # cost that grows with the square of its size): count the bytes of an unfinished head
                # here. A read in which this head began is not counted (it may hold the end of a body):
                # the cap is passed at most one read late.
                self.head_bytes = self.head_bytes + len(data) if in_head and heads == self.heads else 0
                if self.head_bytes > MAX_HEAD:
                    raise _Refused(431, f"request line and headers larger than {MAX_HEAD} bytes")
        except _Refused as too_large:
            self.refuse(too_large)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if not isinstance(refused, _Refused):  # a bug of ours: this connection's client gets a 500
                log.error("webhook front failed on a request", exc_info=refused)
                refused = _Refused(500, "the webhook front failed on this request; it was not stored")
            self.refuse(refused)
        except httptools.HttpParserUpgrade:
            self.refuse(_Refused(400, "protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            self.refuse(_Refused(400, f"malformed HTTP request: {exc}"))

    # --- httptools callbacks -----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        if self.phase == _IDLE:
            self.phase, self.phase_since = _HEAD, time.monotonic()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if len(self.url) > MAX_LINE:
            raise _Refused(414, f"request target longer than {MAX_LINE} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD:
            raise _Refused(431, f"request line and headers larger than {MAX_HEAD} bytes")
        # the first of repeated headers, as aiohttp's headers.get gives; names lower-cased for the router
        self.headers.setdefault(name.decode("latin-1").lower(), value.decode("utf-8", "replace"))

    def on_headers_complete(self) -> None:
        server = self.server
        self.heads += 1
        self.head_bytes = 0
        self.phase, self.phase_since = _BODY, time.monotonic()
        if self.parser.should_upgrade():  # refused before the request counts as complete: one answer, not two
            raise _Refused(400, "protocol upgrades are not supported")
        coding = self.headers.get("transfer-encoding")
        if coding is not None and coding.strip().lower() != "chunked":
            # llhttp reads a body framed by `gzip, chunked` as chunked and hands it over still compressed:
            # only `chunked` alone is a body this server can read as sent
            others = ", ".join(c.strip() for c in coding.split(",") if c.strip().lower() != "chunked")
            raise _Refused(501, f"Transfer-Encoding {others or coding} is not supported")
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > server.max_body:
            raise _Refused(413, f"body larger than {server.max_body} bytes")
        try:
            path = unquote(httptools.parse_url(self.url).path.decode("utf-8", "replace"))
        except httptools.HttpParserInvalidURLError:
            raise _Refused(400, "malformed request target") from None
        self.path = path
        self.match = server.pattern.fullmatch(path)
        if self.match is None:
            self.refusal = (404, orjson.dumps({"error": f"no webhook at {path}"}), None)
        elif self.parser.get_method() != b"POST":
            self.refusal = (405, _NOT_POST, {"Allow": "POST"})
        else:
            self._admit_body()
            if self.headers.get("expect", "").lower() == "100-continue" and self.parser.get_http_version() == "1.1":
                assert self.transport is not None
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.server.max_body:
            raise _Refused(413, f"body larger than {self.server.max_body} bytes")
        if self.refusal is None:
            self.body.append(chunk)

    def _admit_body(self) -> None:
        """Read the body now if it fits in the process's budget, else pause until it does."""
        length = self.headers.get("content-length")
        if length is not None:
            size = int(length) if length.isdigit() else 0
        else:
            size = self.server.max_body if "transfer-encoding" in self.headers else 0
        if not size:
            return
        if self.server.reserve(size):
            self.held = size
        else:
            self.wanted = size
            self.server.starved.append(self)
            self.pause("budget")

    def _release(self) -> None:
        """The body is read (or never will be): give its share of the budget back."""
        held, self.held = self.held, 0
        if self.wanted:
            self.wanted = 0
            with contextlib.suppress(ValueError):
                self.server.starved.remove(self)
            self.resume("budget")
        if held:
            self.server.release(held)

    def on_message_complete(self) -> None:
        self.phase, self.phase_since = _IDLE, time.monotonic()
        slot: list[bytes | None] = [None]
        self.answers.append(slot)
        keep_alive = self.parser.should_keep_alive() and not self.server.draining
        if not keep_alive:
            self.last = True
            if self.transport is not None:
                self.transport.pause_reading()  # nothing after it is read
        if self.refusal is not None:
            status, body, headers = self.refusal
            self.server.channel.refused(status, self.remote, body)
            slot[0] = response_head(status, len(body), headers, not keep_alive) + body
            self._flush()
            return
        assert self.match is not None
        raw = b"".join(self.body)
        self.body = []
        self._release()
        meta = orjson.dumps(
            {"r": self.remote, "h": self.headers, "p": self.path, "t": self.match.groupdict().get("trigger")}
        )

        def reply(status: int, headers: dict[str, str], body: bytes) -> None:
            slot[0] = response_head(status, len(body), headers, not keep_alive) + body
            self._flush()

        self.server.channel.ask(meta, raw, reply)
        if len(self.answers) >= MAX_PIPELINED:  # a client that pipelines faster than it is answered
            self.pause("pipelined")

    # --- answers -----------------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write the answers that are ready, in request order."""
        transport = self.transport
        answers = self.answers
        out = []
        while answers and answers[0][0] is not None:
            out.append(answers.popleft()[0])
        if self.server.draining:
            self.server.check_drained()
        if transport is None or transport.is_closing():
            return
        if out:
            transport.write(b"".join(cast(list[bytes], out)))
            self.last_active = time.monotonic()
        if self.last and not answers:
            self._close_after_answers(transport)
        elif len(answers) < MAX_PIPELINED // 2:
            self.resume("pipelined")

    def _close_after_answers(self, transport: asyncio.Transport) -> None:
        self.closing = True
        if not transport.can_write_eof():  # TLS: no half-close
            transport.close()
            return
        # FIN after the answers, then read on and drop what comes: closing with the rest of a large body
        # unread would send a reset, and the client could lose the answer (the 413) it has not read yet
        transport.write_eof()
        transport.resume_reading()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def eof_received(self) -> bool:
        if self.answers and not self.closing:  # a client that half-closes after its request still gets the answer
            self.last = True
            return True
        return False  # the client is done: close our side too

    def refuse(self, refused: _Refused) -> None:
        """Answer after the answers owed before it, then close: the rest of the stream cannot be read."""
        self.closing = self.last = True
        self._release()
        self.server.channel.refused(refused.status, self.remote, refused.body)
        if self.transport is not None:
            self.transport.pause_reading()
        self.answers.append([response_head(refused.status, len(refused.body), None, True) + refused.body])
        self._flush()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


async def serve(settings: Mapping[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    channel = _Channel()
    await loop.connect_accepted_socket(lambda: channel, socket.socket(fileno=settings["channel_fd"]))
    listener = socket.socket(fileno=settings["listen_fd"])
    http = _Server(
        channel,
        settings["path"],
        settings["max_body"],
        max_connections=settings["max_connections"],
        header_timeout=settings["header_timeout"],
        body_timeout=settings["body_timeout"],
    )
    tls = settings.get("tls")
    server = await loop.create_server(
        lambda: _Connection(http), sock=listener, ssl=tls_context(tls) if tls else None, backlog=1024
    )
    freeze_startup_heap()
    channel.send(encode(READY, 0))
    stop = asyncio.ensure_future(channel.stop.wait())
    while not stop.done():
        await asyncio.wait([stop], timeout=SWEEP_SECONDS)
        http.sweep(time.monotonic())
    # stop accepting, then let requests in progress finish: their answers still come over the channel
    server.close()
    http.drain()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(http.drained.wait(), settings["drain_seconds"])
    for conn in list(http.connections):
        conn.close()
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
