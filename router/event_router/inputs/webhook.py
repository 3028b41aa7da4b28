"""Built-in input `webhook`: receives what the Connector's webhooks module POSTs.

The Connector sends `POST <url>` with `{"trigger": "<namespace>", "data": {...}}` (no `data` key when the
event has none), `Content-Type: application/json`, the target's static headers, `x-correlation-id`, and
the API key in `x-api-key` (header name configurable). It never retries: this input answers 2xx only
once the event is durably stored, and says exactly what is wrong otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import math
import os
import re
import resource
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from anyio.abc import TaskStatus

from event_router.api import (
    SECRET_SCHEMA,
    ConfigError,
    Event,
    EventSink,
    Input,
    Listener,
    LogThrottle,
    PluginContext,
    Rejected,
    RouterError,
    SourceMessage,
    SpoolFull,
    format_listen,
    hookimpl,
    listen_error,
    parse_listen,
    secret_schema,
)
from event_router.api.decode import is_blank
from event_router.api.ratelimit import RATE_LIMIT_SCHEMA, RateLimit, RateLimiter
from event_router.web.signing import PLACEHOLDER_SECRET, decode_secret, verify

if TYPE_CHECKING:  # granian itself is imported when a webhook input starts, not by every CLI command
    # the protocol's type, which granian.rsgi re-exports under another name (without its type)
    from granian._granian import RSGIHTTPProtocol as HTTPProtocol
    from granian.rsgi import Scope
    from granian.server.embed import Server

#: request headers kept in the event's meta; credentials never are. The W3C trace context is kept whether
#: telemetry is on or not: stored with the event, it is the parent of the event's spans (event_router.core
#: .telemetry), also after a restart, or once telemetry is turned on
_KEPT_HEADERS = ("x-correlation-id", "user-agent", "content-type", "webhook-id", "traceparent", "tracestate")


def _allowed(remote: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:  # a Unix socket or a proxy that hides the peer: not a listed network
        return False
    return any(address in network for network in networks)


#: seconds a stopping input gives a request beyond its header and body timeouts, to be stored and answered
STORE_SECONDS = 5
#: seconds past `header_timeout` a kept-alive connection is taken to be open still: hyper closes one idle for
#: `header_timeout` by its own timer, which starts once the answer is written, a moment after it is counted here
KEEP_ALIVE_MARGIN = 1.0
#: how often a stopping input looks whether the kept-alive connections it answered are gone
DRAIN_POLL = 0.05
#: seconds the HTTP server may take to serve its socket once started
START_SECONDS = 10
#: the listen queue's length: connections past `max_connections`, and while the router restarts with a socket
#: systemd holds, wait there. packaging/event-router.socket sets the same (`Backlog=`); the router sets it
#: again on a passed socket when it serves it
BACKLOG = 1024
#: what the readiness probe sends: no request at all, which the HTTP server answers itself (400) and a TLS
#: server closes, without the router seeing it
_PROBE = b"PROBE\r\n\r\n"

#: file descriptors a process keeps for itself beside client connections (spool, outputs' and brokers'
#: connections, the admin endpoint, logs): the default max_connections leaves them free
RESERVED_FDS = 128
DEFAULT_MAX_CONNECTIONS = 1000
#: hyper's read buffer of one connection, the most it takes from the socket ahead of the router. A head
#: that does not fit is refused (431); the buffer keeps the size it grew to while its connection lives, so
#: this, not the body size, is what a client without the API key holds per connection while its refused
#: body is drained or while it does not read its answers (hyper's default is about 400 KiB)
READ_BUFFER_BYTES = 64 * 1024
#: seconds between looks at the listen queue: connections granian does not accept, being at max_connections
LISTEN_QUEUE_INTERVAL = 0.5


def _open_file_limit() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


#: (HTTP status, JSON body, extra headers): what a request gets
Answer = tuple[int, dict[str, Any], dict[str, str] | None]
_CANNOT_STORE: Answer = (503, {"error": "the router cannot store events right now"}, {"Retry-After": "5"})
#: requests whose bodies are in while the spool commits go into the next submit together, at most this many
BATCH_LIMIT = 512


def _duplicate(message_id: str) -> Answer:
    """A Standard Webhooks message already stored: 2xx, so the sender stops retrying it."""
    return 200, {"status": "duplicate", "webhook_id": message_id}, None


def _transfer_coding(headers: Mapping[str, str]) -> Answer | None:
    """501 for a Transfer-Encoding other than `chunked` alone: its body would be read still encoded."""
    coding = headers.get("Transfer-Encoding")
    if coding is None or coding.strip().lower() == "chunked":
        return None
    others = ", ".join(c.strip() for c in coding.split(",") if c.strip().lower() != "chunked")
    return 501, {"error": f"Transfer-Encoding {others or coding} is not supported"}, None


class _Headers(Mapping[str, str]):
    """A request's headers as `screen` and `prepare` read them: looked up by lower-case name (hyper's).

    granian hands over a value that is not UTF-8 as None: such a header is present with the value U+FFFD
    (a wrong API key or signature; a correlation id that says its bytes were not text), never absent.
    """

    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getitem__(self, key: str) -> str:
        value = self._inner.get(key)
        if value is None:
            if key in self._inner:
                return "\ufffd"
            raise KeyError(key)
        return value  # type: ignore[no-any-return]

    def get(self, key: str, default: Any = None) -> Any:
        # Mapping's own `get` goes through __getitem__ and a KeyError: this is called several times a request
        value = self._inner.get(key)
        if value is None:
            return "\ufffd" if key in self._inner else default
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._inner

    def __iter__(self) -> Iterator[str]:
        return iter(self._inner.keys())

    def __len__(self) -> int:
        return len(self._inner.keys())


class _BodyDeadlines:
    """The body-read deadlines of one input's requests in progress, on one loop timer, not a timer each.

    What `asyncio.timeout(seconds)` around each read would do, for less per request (no timer handle is
    made, scheduled and cancelled): a task past its deadline is cancelled, and the read's CancelledError
    turns into a time-out (`expired`) unless something else cancelled the task too. Every deadline is
    `seconds` after its start, so the starts' order, the dict's, is the deadlines' order: the timer is armed
    for the oldest read's deadline; when it fires it cancels every read past its own, and is armed again
    for the oldest left. A read is cut off at its deadline, as with `asyncio.timeout`. The timer is left to
    fire after the input stops: a read still going then is cut off all the same.
    """

    __slots__ = ("_expired", "_reading", "_seconds", "_timer")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        #: task -> (its deadline on the loop's clock, its `cancelling()` at the start), oldest first
        self._reading: dict[asyncio.Task[Any], tuple[float, int]] = {}
        #: tasks cancelled for their deadline whose read has not ended yet -> `cancelling()` at the start
        self._expired: dict[asyncio.Task[Any], int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> asyncio.Task[Any]:
        """The current task starts a read; pass what this returns to `expired` and `end`."""
        task = asyncio.current_task()
        assert task is not None  # granian runs each request in a task
        loop = task.get_loop()
        deadline = loop.time() + self._seconds
        self._reading[task] = (deadline, task.cancelling())
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._fire, loop)
        return task

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """On the read's CancelledError: whether it is the deadline's (then withdrawn: the caller answers 408)."""
        before = self._expired.pop(task, None)
        return before is not None and task.uncancel() <= before

    def end(self, task: asyncio.Task[Any]) -> None:
        """The read is over, whichever way."""
        self._reading.pop(task, None)
        if self._expired:
            self._expired.pop(task, None)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        reading = self._reading
        while reading:
            task, (deadline, before) = next(iter(reading.items()))
            if deadline > now:
                self._timer = loop.call_at(deadline, self._fire, loop)
                return
            del reading[task]
            self._expired[task] = before
            task.cancel()


# not frozen: one is made per request, and a frozen dataclass's __init__ sets each field through
# object.__setattr__, several times slower
@dataclass(slots=True)
class Received:
    """What the checks need of one POST."""

    remote: str | None
    #: looked up by lower-case name
    headers: Mapping[str, str]
    path: str
    path_trigger: str | None


class WebhookInput(Input):
    """HTTP receiver for the Connector's webhooks (`type = "webhook"`)."""

    type_name = "webhook"
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["listen"],
        "properties": {
            "listen": {"type": "string", "description": "host:port to listen on, e.g. 127.0.0.1:8787"},
            "path": {"type": "string", "pattern": "^/", "description": "URL path; may contain {{trigger}}"},
            "api_key": SECRET_SCHEMA,
            "api_key_header": {"type": "string", "minLength": 1},
            "max_body_bytes": {"type": "integer", "minimum": 1024, "maximum": 64 * 1024 * 1024},
            "signing_secrets": {
                "type": "array",
                "minItems": 1,
                "items": secret_schema(PLACEHOLDER_SECRET),
                "description": "Standard Webhooks secrets (whsec_...); several during a key rotation",
            },
            "signature_tolerance": {"type": "integer", "minimum": 1, "description": "seconds (300)"},
            "allow_networks": {
                "type": "array",
                "items": {"type": "string"},
                "description": "client networks allowed to post (CIDR); others get 403",
            },
            "rate_limit": RATE_LIMIT_SCHEMA,
            "max_connections": {
                "type": "integer",
                "minimum": 1,
                "description": "client connections served at once; more wait in the listen queue",
            },
            "header_timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "seconds a request's line and headers may take to arrive (10)",
            },
            "body_timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "seconds a request's body may take to arrive (30)",
            },
            "socket": {
                "enum": ["auto", "systemd"],
                "description": "auto: serve a listening socket systemd passes for this input, else bind listen;"
                " systemd: refuse to start without one",
            },
            # removed: refused with a ConfigError that says so (see __init__); not listed as allowed
            "processes": {"x-removed": True},
            "tls": {
                "type": "object",
                "additionalProperties": False,
                "required": ["cert_file", "key_file"],
                "properties": {
                    "cert_file": {"type": "string"},
                    "key_file": {"type": "string"},
                    "client_ca_file": {"type": "string", "description": "require client certificates signed by it"},
                },
            },
        },
    }

    def __init__(self, config: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(config, context)
        if "processes" in config:
            raise ConfigError(
                "processes",
                "front processes were removed: the router serves HTTP through granian, whose parser runs on its"
                " own thread; delete this line (docs/scaling.md says what to do for more throughput)",
            )
        try:
            self.host, self.port = parse_listen(config["listen"])
        except ValueError as exc:
            raise ConfigError("listen", str(exc)) from None
        #: the router sets `passed` to a socket systemd holds for this input, when it passed one
        self.listener: Listener = Listener(self.host, self.port, required=config.get("socket") == "systemd")
        path = config.get("path", "/events")
        if "{{" in path:
            if re.fullmatch(r"[^{}]*\{\{\s*trigger\s*\}\}[^{}]*", path) is None:
                raise ConfigError("path", f"{path!r}: only one {{{{trigger}}}} placeholder is allowed in the path")
            path = re.sub(r"\{\{\s*trigger\s*\}\}", "{trigger}", path)
        self.route_path = path
        #: the path, with its `{trigger}` part (one path segment) captured
        self._route = re.compile("(?P<trigger>[^/]+)".join(re.escape(part) for part in path.split("{trigger}")))
        key = config.get("api_key")
        if key is not None and not str(key).strip():  # the config loader refuses it first; this guards plugins' callers
            raise ConfigError("api_key", "the secret is empty")
        self.api_key: bytes | None = str(key).encode() if key is not None else None
        self.key_header = config.get("api_key_header", "x-api-key")
        #: hyper gives header names in lower case
        self.key_lookup = self.key_header.lower()
        self.max_body = config.get("max_body_bytes", 4 * 1024 * 1024)
        try:
            self.allow = [ipaddress.ip_network(n, strict=False) for n in config.get("allow_networks", [])]
        except ValueError as exc:
            raise ConfigError("allow_networks", str(exc)) from None
        limit_fds = _open_file_limit()
        allowed = DEFAULT_MAX_CONNECTIONS if limit_fds is None else max(1, limit_fds - RESERVED_FDS)
        #: connections served at once; past it new connections wait in the listen queue, none is refused.
        #: Never more than the process's open-file limit leaves, so accepting never fails for want of a
        #: descriptor
        self.max_connections: int = min(config.get("max_connections", DEFAULT_MAX_CONNECTIONS), allowed)
        if config.get("max_connections", 0) > allowed:
            self.log.warning(
                "max_connections lowered to what the open-file limit leaves for connections",
                extra={"input": self.name, "max_connections": allowed, "open_file_limit": limit_fds},
            )
        self.header_timeout: float = config.get("header_timeout", 10.0)
        self.body_timeout: float = config.get("body_timeout", 30.0)
        limit = config.get("rate_limit")
        self.limiter = RateLimiter.of(RateLimit.from_table(limit)) if limit else None
        self.tls = config.get("tls")
        if self.tls:
            for key in ("cert_file", "key_file", "client_ca_file"):
                if key in self.tls and not (context.config_dir / self.tls[key]).is_file():
                    raise ConfigError(f"tls.{key}", f"{self.tls[key]!r} is not a readable file")
        self.signing_secrets = [str(s) for s in config.get("signing_secrets", [])]
        for index, secret in enumerate(self.signing_secrets):
            try:
                decode_secret(secret)
            except ValueError as exc:
                raise ConfigError(f"signing_secrets[{index}]", str(exc)) from None
        self.tolerance = config.get("signature_tolerance", 300)
        self.bound_port: int | None = None
        self._ready = False
        #: requests being handled (head in, not yet answered): at most one per connection
        self._in_flight = 0
        #: connections waiting in the listen queue at two looks in a row (0 otherwise): granian accepts none
        #: while at max_connections, idle connections included
        self._queued = 0
        #: serving a socket systemd holds: a stop hands the connections over to the next run (`_drain`)
        self._handing_over = False
        #: stopping: every answer closes its connection, so that no client is left holding a kept-alive one
        self._draining = False
        #: with `_handing_over`: client address -> when its connection was last answered and kept alive,
        #: oldest first: the connections a client may send its next request on. Forgotten once hyper closed
        #: them for idleness
        self._kept: OrderedDict[str, float] = OrderedDict()
        self._kept_for = self.header_timeout + KEEP_ALIVE_MARGIN
        #: refusals are logged at most once a minute per (status, client), with how many were held back
        self._refusals = LogThrottle()

    def guarantee(self) -> str:
        if self.signing_secrets:
            # the Connector cannot sign: the sender is one that signs, and Standard Webhooks senders retry
            return "at least once from a sender that retries on non-2xx; stored once per webhook-id"
        # with systemd's socket (`socket = "systemd"`) a restart keeps connections waiting in its queue; only
        # a router killed mid-request loses what it was answering
        stop = "when killed" if self.listener.required else "during a restart without the systemd socket unit"
        refused = (
            f"{stop}, when the spool cannot write or past rate_limit"
            if self.limiter
            else f"{stop} or when the spool cannot write"
        )
        # The Connector's webhooks module POSTs once, without retry or queue: whatever it does not get a 2xx
        # for is gone (enmeshed-events.md 3.5, 3.6)
        return f"lost while the router is unreachable or refuses, as {refused}: the Connector does not retry"

    def config_warnings(self) -> list[tuple[str, str]]:
        if self.limiter is None:
            return []
        # the Connector posts each event once and takes any answer as final (its webhooks module has no
        # retry): a rate limit turns its bursts into events lost, never into events delayed
        return [
            (
                "rate_limit",
                "requests over the limit are answered 429, and the Connector never retries a webhook: each is "
                "an event lost. Keep rate_limit for senders that retry; allow_networks and api_key keep "
                "others out without refusing the Connector",
            )
        ]

    def tls_paths(self) -> dict[str, str] | None:
        """The `tls` table with absolute paths."""
        if not self.tls:
            return None
        return {key: str((self.context.config_dir / value).resolve()) for key, value in self.tls.items()}

    def is_ready(self) -> bool:
        return self._ready and self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        if not self._ready:
            return None
        # idle connections are granian's, unseen here: the cap is known to be reached when every connection
        # it allows has a request in progress, or when connections wait to be accepted
        if self._in_flight >= self.max_connections:
            return (
                f"webhook is at max_connections ({self.max_connections}): every connection has a request in"
                " progress, new connections wait"
            )
        if self._queued:
            return (
                f"webhook is at max_connections ({self.max_connections}): {self._queued} new connections wait"
                " to be accepted"
            )
        return None

    async def run(self, sink: EventSink, *, task_status: TaskStatus[None]) -> None:
        passed = self.listener.passed
        own: socket.socket | None = None
        if passed is None:
            try:
                own = _listen(self.host, self.port)
            except OSError as exc:
                raise listen_error("listen", self.host, self.port, exc) from exc
        listening = passed or own
        assert listening is not None
        try:
            # accepted connections inherit it, as from granian's own listeners
            listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # a connection is taken off the queue only once its request's first bytes are in: the server's
            # graceful stop closes a connection it has read nothing from, which would cut off a request
            # whose client has connected and not yet sent it; with this, none is left in that state. (One
            # that sends nothing is taken once the kernel's SYN-ACK retries have covered this many seconds,
            # then closed after header_timeout)
            listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, math.ceil(self.header_timeout))
            port = int(listening.getsockname()[1])
            # granian closes the descriptor it serves when it stops: it gets its own, and the socket itself
            # stays open for the next run (a reload, a restart) while systemd or this input holds it
            served_fd = os.dup(listening.fileno())
            await self._serve(sink, listening, served_fd, port, passed is not None, task_status)
        finally:
            if own is not None:
                own.close()

    async def _serve(
        self,
        sink: EventSink,
        listening: socket.socket,
        fd: int,
        port: int,
        passed: bool,
        task_status: TaskStatus[None],
    ) -> None:
        batch = _Batch(self, sink)
        deadlines = _BodyDeadlines(self.body_timeout)
        self._handing_over, self._draining = passed, False
        self._kept.clear()
        try:
            server = self._server(self._app(sink, batch, deadlines), fd, port)
        except BaseException:
            os.close(fd)  # granian takes it over only once it serves
            raise
        served = anyio.Event()

        async def serve() -> None:
            try:
                # shielded: on cancellation `server.stop()` below ends it once requests in progress are answered
                with anyio.CancelScope(shield=True):
                    await server.serve()
            finally:
                served.set()

        watching = anyio.CancelScope()

        async def watch() -> None:
            with watching:
                await self._watch_listen_queue(listening)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(serve)
            tasks.start_soon(batch.run)
            try:
                await _until_serving(self.host, port, served)
                if hasattr(socket, "TCP_INFO"):  # Linux: the listen queue can be read
                    tasks.start_soon(watch)
                self.bound_port = port
                self._ready = True
                self.log.info(
                    "webhook listening",
                    extra={
                        "listen": format_listen(self.host, port),
                        "path": self.route_path,
                        "socket": "systemd" if passed else "own",
                    },
                )
                task_status.started()
                await served.wait()
                raise RouterError("the webhook's HTTP server stopped by itself")
            finally:
                self._ready = False
                self._queued = 0
                watching.cancel()
                with anyio.CancelScope(shield=True):
                    if passed:
                        with anyio.move_on_after(self._kept_for):
                            await self._drain(served)
                    # then stop accepting (what waits in the listen queue stays there for the next run
                    # when systemd holds the socket) and answer the requests in progress: their events get
                    # stored, the batch keeps committing until the server is done. A request begun just
                    # now gets its header and body timeouts
                    server.stop()  # type: ignore[no-untyped-call]
                    with anyio.move_on_after(self.header_timeout + self.body_timeout + STORE_SECONDS):
                        await served.wait()
                    batch.stop()

    async def _watch_listen_queue(self, listener: socket.socket) -> None:
        """Keep `_queued`: connections in the listen queue at two looks in a row. One look could catch a burst
        of new connections a moment before granian accepts them."""
        before = 0
        while True:
            await anyio.sleep(LISTEN_QUEUE_INTERVAL)
            try:
                now = _accept_queue(listener)
            except OSError:  # closed: the input is stopping
                return
            self._queued = now if before else 0
            before = now

    async def _drain(self, served: anyio.Event) -> None:
        """Until no client may still hold a kept-alive connection to this input, or the server is gone.

        Each kept-alive connection is closed by its own next answer from now on (`Connection: close`), or by
        hyper once idle for `header_timeout`, as in normal operation, while new connections are still served
        (one request each). Closing such a connection at once, as hyper's graceful stop does, would cut off
        a request its client sends at that moment, which the Connector never sends again. Only done when
        systemd holds the socket: without it, what arrives after the stop is refused anyway.
        """
        self._draining = True
        while not served.is_set():
            self._forget_idle(time.monotonic())
            if not self._kept:
                return
            await anyio.sleep(DRAIN_POLL)

    def _forget_idle(self, now: float) -> None:
        kept = self._kept
        while kept:
            client, since = next(iter(kept.items()))
            if now - since < self._kept_for:
                return
            del kept[client]

    def _server(self, app: Any, fd: int, port: int) -> Server:
        from granian._granian import SocketHolder  # granian.net re-exports it, without its type
        from granian.constants import HTTPModes, Interfaces, SSLProtocols
        from granian.http import HTTP1Settings
        from granian.server.embed import Server

        class OnSocket(Server):
            """granian's embedded server on a socket that listens already (it binds address:port otherwise).

            granian's multi-process server serves a descriptor the same way in each worker: the worker takes
            a `SocketHolder` of it in place of the address (`granian.server.mp`).
            """

            def _init_shared_socket(self) -> None:
                self._ssp = None
                self._shd = SocketHolder(fd, False, BACKLOG)  # type: ignore[call-arg,assignment]
                self._sfd = fd  # type: ignore[assignment]

        tls = self.tls_paths()
        return OnSocket(
            app,
            address=self.host,
            port=port,
            interface=Interfaces.RSGI,
            http=HTTPModes.http1,
            websockets=False,
            runtime_threads=1,
            backlog=BACKLOG,
            # connections served at once; more wait in the listen queue (the kernel's), none is refused
            backpressure=self.max_connections,
            http1_settings=HTTP1Settings(
                # also how long a kept-alive connection may stay idle
                header_read_timeout=max(1, math.ceil(self.header_timeout * 1000)),
                max_buffer_size=READ_BUFFER_BYTES,
            ),
            log_enabled=False,
            # incremental: granian's logging setup leaves the router's handlers as they are (a full
            # dictConfig closes every handler and installs its own on stdout)
            log_dictconfig={"version": 1, "incremental": True, "handlers": {}, "loggers": {}},
            ssl_cert=Path(tls["cert_file"]) if tls else None,
            ssl_key=Path(tls["key_file"]) if tls else None,
            ssl_protocol_min=SSLProtocols.tls12,
            ssl_ca=Path(tls["client_ca_file"]) if tls and "client_ca_file" in tls else None,
            ssl_client_verify=bool(tls and "client_ca_file" in tls),
        )

    def _app(self, sink: EventSink, batch: _Batch, deadlines: _BodyDeadlines) -> Any:
        """The RSGI application: hyper has parsed the request's head on granian's thread; this runs on the loop."""
        # re-exported by granian.rsgi under another name, without its type
        from granian._granian import RSGIProtocolClosed as ProtocolClosed

        route = self._route
        has_trigger = "trigger" in route.groupindex
        max_body = self.max_body

        async def app(scope: Scope, proto: HTTPProtocol) -> None:
            self._in_flight += 1
            try:
                answer, close = await answer_to(scope, proto)
            except ProtocolClosed:  # the client went away before its body was in: nobody to answer
                return
            except Exception:  # a failure of the router's on one request costs only that request
                self.log.exception("the router failed on a request; it was not stored")
                answer, close = (500, {"error": "the router failed on this request; it was not stored"}, None), True
            finally:
                self._in_flight -= 1
            status, body, extra = answer
            if status >= 400:
                self.refused(sink, _remote(scope), answer)
            headers = [("content-type", "application/json")]
            if extra:
                headers.extend((name.lower(), value) for name, value in extra.items())
            if close or self._draining:
                headers.append(("connection", "close"))
                self._kept.pop(scope.client, None)
            elif self._handing_over and _keeps_alive(scope):
                now = time.monotonic()
                self._kept[scope.client] = now
                self._kept.move_to_end(scope.client)
                self._forget_idle(now)
            proto.response_bytes(status, headers, orjson.dumps(body))

        async def answer_to(scope: Scope, proto: HTTPProtocol) -> tuple[Answer, bool]:
            """The answer, and whether to close the connection after it (the rest of the request is unread)."""
            headers = _Headers(scope.headers)
            length = headers.get("content-length")
            matched = route.fullmatch(scope.path)
            if matched is None:
                return await refuse(proto, headers, (404, {"error": f"no webhook at {scope.path}"}, None))
            if scope.method != "POST":
                return await refuse(proto, headers, (405, {"error": "only POST is accepted here"}, {"Allow": "POST"}))
            received = Received(_remote(scope), headers, scope.path, matched["trigger"] if has_trigger else None)
            coding = _transfer_coding(headers)
            if coding is not None:  # where its body ends is unknown: not read, the connection closes
                return coding, True
            if length is not None and int(length) > max_body:
                # answered before the body is read: hyper sends `100 Continue` only once it is read
                return self.too_large(), True
            refused = self.screen(received)
            if refused is not None:
                return await refuse(proto, headers, refused)
            # not anyio's scope: this runs in a task granian made, for which anyio would build its task state
            # on every request
            reading = deadlines.start()
            try:
                # bounded by the check on Content-Length: read whole by granian, one await
                raw = await proto() if length is not None else await _read_chunked(proto, max_body)
            except asyncio.CancelledError:
                if not deadlines.expired(reading):
                    raise
                return self.body_too_slow(), True
            finally:
                deadlines.end(reading)
            if isinstance(raw, int):
                return self.too_large(), True
            item = self.prepare(received, raw)
            if isinstance(item, tuple):
                return item, False
            return await batch.put(item), False

        async def refuse(proto: HTTPProtocol, headers: _Headers, answer: Answer) -> tuple[Answer, bool]:
            """A refusal before the body: the body is read and dropped, so that the client, still sending it,
            gets the answer (a socket closed with unread bytes is reset, and the answer can be lost) and
            may send its next request; not when the client waits for `100 Continue` before sending it."""
            if "expect" in headers:
                return answer, True
            size = 0
            reading = deadlines.start()
            try:
                async for chunk in proto:
                    size += len(chunk)
                    if size > max_body:
                        break
                else:
                    return answer, False
            except asyncio.CancelledError:
                if not deadlines.expired(reading):
                    raise
            finally:
                deadlines.end(reading)
            return answer, True

        return app

    def refused(self, sink: EventSink, remote: str | None, answer: Answer) -> None:
        """Make an error answer (status 400 or more) visible on the router: the sender (the Connector) never retries.

        Counted always (`requests_rejected_total{input,status}`). Logged at warning, throttled per status
        and client (`LogThrottle`), unless the answer names the dead letter its request went to: that was
        logged with the dead letter.
        """
        status, body, _ = answer
        sink.refused(status)
        if "dead_letter" in body:
            return
        client = remote or "unknown"
        held = self._refusals.admit((status, client))
        if held is None:
            return
        error = str(body.get("error", ""))
        extra: dict[str, Any] = {"input": self.name, "status": status, "remote": client, "error": error}
        message = "request refused"
        if held:
            extra["suppressed"] = held
            message += f" (and {held} more like it since the last such line)"
        self.log.warning(message, extra=extra)

    # --- what every request goes through ------------------------------------------------------------------

    def too_large(self) -> Answer:
        return 413, {"error": f"body larger than {self.max_body} bytes"}, None

    def body_too_slow(self) -> Answer:
        return 408, {"error": f"request body not received within {self.body_timeout:g} s"}, None

    def screen(self, received: Received) -> Answer | None:
        """The checks that need no body (allow-list, rate limit, API key): an answer refuses the request."""
        remote = received.remote or ""
        if self.allow and not _allowed(remote, self.allow):
            return 403, {"error": f"client {remote} is not in allow_networks"}, None
        if self.limiter is not None and (wait := self.limiter.allow(remote)) > 0:
            return 429, {"error": "rate limit exceeded"}, {"Retry-After": str(max(1, math.ceil(wait)))}
        if self.api_key is not None:
            given = received.headers.get(self.key_lookup)
            # a missing or empty header never matches, whatever the key: the comparison alone would
            # accept it against an empty key. A value that is not UTF-8 is U+FFFD here (`_Headers`): a
            # wrong key, not a failure
            if not given:
                return 401, {"error": f"missing API key header {self.key_header}"}, None
            if not hmac.compare_digest(given.encode(), self.api_key):
                return 401, {"error": f"wrong API key in header {self.key_header}"}, None
        return None

    def prepare(self, received: Received, raw: bytes) -> Answer | Event | Rejected:
        """Signature, replay and decoding: an answer (refused or a repeat), an event, or bytes to dead-letter.

        An event of a signed request carries its Standard Webhooks message id as its `message`, which the
        answer to a repeat names."""
        message_id = None
        if self.signing_secrets:
            if not any(verify(s, received.headers, raw, tolerance=self.tolerance) for s in self.signing_secrets):
                return 401, {"error": "missing, invalid or expired webhook signature (Standard Webhooks)"}, None
            message_id = received.headers["webhook-id"]
        headers = received.headers
        meta: dict[str, Any] = {
            # a header's value is never None: `get` finds each kept one with one lookup
            "headers": {h: value for h in _KEPT_HEADERS if (value := headers.get(h)) is not None},
            "remote": received.remote,
            "path": received.path,
        }
        try:
            event = self._decode(raw, received.path_trigger, meta)
        except ValueError as exc:
            return Rejected(raw, str(exc), received.path_trigger, meta)
        if message_id is not None:
            # the spool decides whether this id is new, in the commit that would store the event (so a
            # restart or copies arriving at once change nothing). A copy of this request verifies until
            # `tolerance` past its timestamp (which may lie ahead of our clock); a sender's retry is signed
            # anew, so the id is kept at least `tolerance` from now as well
            stamp = int(headers["webhook-timestamp"])
            event.message = SourceMessage(message_id, max(stamp, time.time()) + self.tolerance)
        return event

    async def store(self, sink: EventSink, items: Sequence[Event | Rejected]) -> list[Answer]:
        """Store what `prepare` made of several requests, events in one submit; one answer per item."""
        answers: list[Answer | None] = [None] * len(items)
        parsed: list[tuple[int, Event]] = []
        for index, item in enumerate(items):
            if isinstance(item, Event):
                parsed.append((index, item))
                continue
            try:
                dlid = await sink.reject(item.payload, item.reason, trigger=item.trigger, meta=item.meta)
            except RouterError:
                answers[index] = _CANNOT_STORE
            else:
                answers[index] = 400, {"error": item.reason, "dead_letter": dlid}, None
        if parsed:
            for (index, _), answer in zip(parsed, await self._submit(sink, [p for _, p in parsed]), strict=True):
                answers[index] = answer
        return [a if a is not None else _CANNOT_STORE for a in answers]

    async def _submit(self, sink: EventSink, items: Sequence[Event]) -> list[Answer]:
        try:
            results = await sink.submit(items)
        except SpoolFull as exc:
            return [(503, {"error": str(exc)}, {"Retry-After": str(max(1, int(exc.retry_after)))})] * len(items)
        except RouterError as exc:  # the spool cannot write (disk full...): not stored, so not acknowledged
            self.log.error("events not stored", extra={"events": len(items), "error": str(exc)})
            return [_CANNOT_STORE] * len(items)
        except Exception:
            if len(items) > 1:  # one event the core fails on must not fail the others sent with it
                return [answer for item in items for answer in await self._submit(sink, [item])]
            self.log.exception("the router failed on an event; it was not stored", extra={"trigger": items[0].trigger})
            return [(500, {"error": "the router failed on this event; it was not stored"}, None)]
        answers: list[Answer] = []
        for item, result in zip(items, results, strict=True):
            if result.status == "duplicate":  # the spool stored this webhook-id before: say so, 2xx
                assert item.message is not None
                answers.append(_duplicate(item.message.id))
                continue
            body: dict[str, Any] = {"id": result.event_id, "status": result.status}
            if result.errors:
                body["errors"] = list(result.errors)
            if result.status == "dead_lettered":
                body["dead_letter"] = result.dead_letter_id
                answers.append((422, body, None))
            else:
                answers.append((202, body, None))
        return answers

    def _decode(self, raw: bytes, path_trigger: str | None, meta: dict[str, Any]) -> Event:
        if is_blank(raw):  # whitespace holds no JSON either: the same answer as an empty body
            raise ValueError('empty body: expected JSON {"trigger": "...", "data": {...}}')
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError(
                f'body is a JSON {type(body).__name__}, expected an object {{"trigger": ..., "data": ...}}'
            )
        trigger = body.get("trigger", path_trigger)
        if not isinstance(trigger, str) or not trigger:
            raise ValueError('body has no "trigger" (a non-empty string naming the Connector event)')
        extra = {k: v for k, v in body.items() if k not in ("trigger", "data")}
        if extra:
            meta["extra"] = extra
        return Event(trigger=trigger, data=body.get("data"), source=self.name, meta=meta, raw=raw)


class _Batch:
    """Stores what requests bring, one `store` in flight: the requests whose bodies come in while the spool
    commits go into the next submit together (one commit for many; a request never waits for more)."""

    def __init__(self, webhook: WebhookInput, sink: EventSink):
        self.webhook = webhook
        self.sink = sink
        self.pending: list[tuple[Event | Rejected, asyncio.Future[Answer]]] = []
        # asyncio's, not anyio's: set by every request, in a task granian made
        self.wake = asyncio.Event()
        self.scope = anyio.CancelScope(shield=True)

    def put(self, item: Event | Rejected) -> asyncio.Future[Answer]:
        """Queue `item` for the next submit: its answer comes as the future's result."""
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        self.wake.set()
        return future

    def stop(self) -> None:
        self.scope.cancel()

    async def run(self) -> None:
        # shielded: the server's requests in progress are stored while it stops; `stop()` ends this after it
        with self.scope:
            while True:
                await self.wake.wait()
                self.wake.clear()
                taken, self.pending = self.pending[:BATCH_LIMIT], self.pending[BATCH_LIMIT:]
                if self.pending:
                    self.wake.set()
                try:
                    answers = await self.webhook.store(self.sink, [item for item, _ in taken])
                except Exception:
                    self.webhook.log.exception("the router failed on a batch of events; they were not stored")
                    failed: Answer = (500, {"error": "the router failed on this event; it was not stored"}, None)
                    answers = [failed] * len(taken)
                for (_, future), answer in zip(taken, answers, strict=True):
                    if not future.done():  # its request was given up (the client went away)
                        future.set_result(answer)


def _remote(scope: Scope) -> str | None:
    """The client's address of granian's `host:port` (IPv6 in brackets)."""
    return scope.client.rpartition(":")[0].strip("[]") or None


async def _read_chunked(proto: HTTPProtocol, max_body: int) -> bytes | int:
    """A chunked request's body, or its size so far (an int) once that is past max_body."""
    chunks: list[bytes] = []
    size = 0
    # chunked: counted as it comes. granian ends this iteration without an error when the client goes
    # away mid-body: what came so far is not JSON (its closing brace is missing) and is dead-lettered
    async for chunk in proto:
        size += len(chunk)
        if size > max_body:
            return size
        chunks.append(chunk)
    return b"".join(chunks)


def _accept_queue(listener: socket.socket) -> int:
    """Connections in `listener`'s listen queue, not accepted yet: Linux gives them as a listening socket's
    `tcpi_unacked` (struct tcp_info: 8 bytes, then 32-bit rto, ato, snd_mss, rcv_mss, unacked)."""
    info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    return int(struct.unpack_from("=I", info, 24)[0])


def _keeps_alive(scope: Scope) -> bool:
    """Whether hyper keeps the connection open after this answer (HTTP/1.1 unless the client said close)."""
    connection = scope.headers.get("connection")
    if scope.http_version == "1.0":
        return connection is not None and connection.lower() == "keep-alive"
    return connection is None or "close" not in connection.lower()


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port, not shared with any other (OSError if anything listens there)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # connections of an earlier run still in TIME_WAIT do not hold the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


async def _until_serving(host: str, port: int, served: anyio.Event) -> None:
    """Return once the HTTP server takes connections off the socket: granian starts serving in its worker,
    after `serve()` started. Connecting proves nothing (the kernel completes connections to a listening
    socket whether or not anything accepts them): the server must answer the probe, or close it."""
    target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        with anyio.fail_after(START_SECONDS):
            async with await anyio.connect_tcp(target, port) as stream:
                await stream.send(_PROBE)
                while not served.is_set():
                    with anyio.move_on_after(DRAIN_POLL):
                        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            await stream.receive()
                        return
    except TimeoutError:
        raise RouterError(f"the webhook's HTTP server did not serve {host}:{port} within {START_SECONDS} s") from None
    raise RouterError(f"the webhook's HTTP server stopped before it served {host}:{port}")


@hookimpl
def event_router_input_types() -> list[type[Input]]:
    return [WebhookInput]
