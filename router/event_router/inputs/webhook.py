"""Built-in input `webhook`: receives what the Connector's webhooks module POSTs.

The Connector sends `POST <url>` with `{"trigger": "<namespace>", "data": {...}}` (no `data` key when the
event has none), `Content-Type: application/json`, the target's static headers, `x-correlation-id`, and
the API key in `x-api-key` (header name configurable). It never retries: this input answers 2xx only
once the event is durably stored, and says exactly what is wrong otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import re
import resource
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import anyio
import orjson
from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError
from anyio.abc import TaskStatus

from event_router.api import (
    SECRET_SCHEMA,
    ConfigError,
    Event,
    EventSink,
    Input,
    PluginContext,
    Rejected,
    RouterError,
    SourceMessage,
    SpoolFull,
    hookimpl,
    listen_error,
    parse_listen,
    secret_schema,
)
from event_router.inputs.ratelimit import LogThrottle, RateLimiter
from event_router.inputs.webhook_front import IDLE_SECONDS, response_head, tls_context
from event_router.inputs.webhook_fronts import Fronts
from event_router.web.signing import PLACEHOLDER_SECRET, decode_secret, verify

#: request headers kept in the event's meta; credentials never are
#: set on a request whose head the `Expect: 100-continue` handler has checked and let through (a typed key
#: from aiohttp 3.14 on, which warns about string keys; a string before it)
SCREENED: Any = web.RequestKey("screened", bool) if hasattr(web, "RequestKey") else "event_router.screened"
_KEPT_HEADERS = ("x-correlation-id", "user-agent", "content-type", "webhook-id")


def _allowed(remote: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:  # a Unix socket or a proxy that hides the peer: not a listed network
        return False
    return any(address in network for network in networks)


#: file descriptors a process keeps for itself beside client connections (spool, outputs' and brokers'
#: connections, the admin endpoint, logs): the default max_connections leaves them free
RESERVED_FDS = 128
DEFAULT_MAX_CONNECTIONS = 1000


def _open_file_limit() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


#: (HTTP status, JSON body, extra headers): what a request gets, whichever process answers it
Answer = tuple[int, dict[str, Any], dict[str, str] | None]
_CANNOT_STORE: Answer = (503, {"error": "the router cannot store events right now"}, {"Retry-After": "5"})


def _response(answer: Answer) -> web.Response:
    status, body, headers = answer
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


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


def _header_text(value: str) -> str:
    """A header value as text that can be stored: aiohttp keeps bytes that are not UTF-8 as lone surrogates
    (which no JSON encoder writes); they become U+FFFD, as a front process decodes them."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def _not_post(request: web.Request) -> Answer:
    return 405, {"error": "only POST is accepted here"}, {"Allow": "POST"}


def _no_webhook(request: web.Request) -> Answer:
    return 404, {"error": f"no webhook at {request.path}"}, None


@dataclass(frozen=True, slots=True)
class Received:
    """What the checks need of one POST, whether this process's HTTP server took it or a front process did."""

    remote: str | None
    #: looked up by lower-case name (aiohttp's headers, or a front's with lower-cased names)
    headers: Mapping[str, str]
    path: str
    path_trigger: str | None


@dataclass(frozen=True, slots=True)
class Parsed:
    event: Event
    #: the Standard Webhooks message id (the event's `message`), for the answer to a repeat
    message_id: str | None


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
            "rate_limit": {
                "type": "object",
                "additionalProperties": False,
                "required": ["per_second"],
                "properties": {
                    "per_second": {"type": "number", "exclusiveMinimum": 0},
                    "burst": {"type": "number", "minimum": 1},
                },
            },
            "max_connections": {
                "type": "integer",
                "minimum": 1,
                "description": "client connections open at once (per front process); more get 503",
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
            "processes": {
                "type": "integer",
                "minimum": 0,
                "maximum": 64,
                "description": "front processes that speak HTTP for this input, on other cores (0: none)",
            },
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
        try:
            self.host, self.port = parse_listen(config["listen"])
        except ValueError as exc:
            raise ConfigError("listen", str(exc)) from None
        path = config.get("path", "/events")
        if "{{" in path:
            if re.fullmatch(r"[^{}]*\{\{\s*trigger\s*\}\}[^{}]*", path) is None:
                raise ConfigError("path", f"{path!r}: only one {{{{trigger}}}} placeholder is allowed in the path")
            path = re.sub(r"\{\{\s*trigger\s*\}\}", "{trigger}", path)
        self.route_path = path
        key = config.get("api_key")
        if key is not None and not str(key).strip():  # the config loader refuses it first; this guards plugins' callers
            raise ConfigError("api_key", "the secret is empty")
        self.api_key: bytes | None = str(key).encode() if key is not None else None
        self.key_header = config.get("api_key_header", "x-api-key")
        #: headers from a front process come with lower-case names
        self.key_lookup = self.key_header.lower()
        self.max_body = config.get("max_body_bytes", 4 * 1024 * 1024)
        try:
            self.allow = [ipaddress.ip_network(n, strict=False) for n in config.get("allow_networks", [])]
        except ValueError as exc:
            raise ConfigError("allow_networks", str(exc)) from None
        limit_fds = _open_file_limit()
        allowed = DEFAULT_MAX_CONNECTIONS if limit_fds is None else max(1, limit_fds - RESERVED_FDS)
        #: connections open at once, per process that speaks HTTP; past it: 503. Never more than the
        #: process's open-file limit leaves, so accepting never fails for want of a descriptor
        self.max_connections: int = min(config.get("max_connections", DEFAULT_MAX_CONNECTIONS), allowed)
        if config.get("max_connections", 0) > allowed:
            self.log.warning(
                "max_connections lowered to what the open-file limit leaves for connections",
                extra={"input": self.name, "max_connections": allowed, "open_file_limit": limit_fds},
            )
        self.header_timeout: float = config.get("header_timeout", 10.0)
        self.body_timeout: float = config.get("body_timeout", 30.0)
        limit = config.get("rate_limit")
        self.limiter = RateLimiter(limit["per_second"], limit.get("burst", limit["per_second"])) if limit else None
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
        #: front processes that speak HTTP for this input; 0: this process does
        self.processes: int = config.get("processes", 0)
        self._fronts: Fronts | None = None
        self.bound_port: int | None = None
        self._ready = False
        #: the in-process server's connections (None with front processes, or before it listens)
        self._limits: _Limits | None = None
        #: refusals are logged at most once a minute per (status, client), with how many were held back
        self._refusals = LogThrottle()

    def tls_paths(self) -> dict[str, str] | None:
        """The `tls` table with absolute paths (a front process reads the files itself)."""
        if not self.tls:
            return None
        return {key: str((self.context.config_dir / value).resolve()) for key, value in self.tls.items()}

    def is_ready(self) -> bool:
        return self._ready and self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        if not self._ready:
            return None
        if self._fronts is not None:
            return self._fronts.not_ready_reason()
        if self._limits is not None and len(self._limits.open) >= self.max_connections:
            return f"webhook is at max_connections ({self.max_connections}): new connections get 503"
        return None

    async def run(self, sink: EventSink, *, task_status: TaskStatus[None]) -> None:
        if self.processes:
            await self._run_fronts(sink, task_status=task_status)
            return
        limits = _Limits(self, sink)
        app = web.Application(client_max_size=self.max_body, middlewares=[limits.middleware])
        expect = limits.expect_handler
        app.router.add_post(self.route_path, self._handler(sink), expect_handler=expect)
        # aiohttp's own 404 and 405 are plain text: these answer in JSON, as a front process does; as routes,
        # not a middleware, they cost the POSTs nothing
        app.router.add_route("*", self.route_path, self._refusing(sink, _not_post), expect_handler=expect)
        app.router.add_route("*", "/{path:.*}", self._refusing(sink, _no_webhook), expect_handler=expect)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=5,
            keepalive_timeout=IDLE_SECONDS,
            logger=_MalformedRequestLog(limits),
        )
        await runner.setup()
        server: asyncio.Server | None = None
        try:
            tls = self.tls_paths()
            aiohttp_server = runner.server
            assert aiohttp_server is not None
            try:
                # aiohttp's protocol inside `_Guard`, which adds the connection cap and the head deadline
                server = await asyncio.get_running_loop().create_server(
                    lambda: _Guard(limits, aiohttp_server()),
                    self.host,
                    self.port,
                    reuse_address=True,
                    ssl=tls_context(tls) if tls else None,
                    backlog=1024,
                )
            except OSError as exc:
                raise listen_error("listen", self.host, self.port, exc) from exc
            sockets: Sequence[Any] = server.sockets or ()
            self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
            self._limits = limits
            self._ready = True
            self.log.info(
                "webhook listening",
                extra={"listen": f"{self.host}:{self.bound_port}", "path": self.route_path},
            )
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self._ready = False
            self._limits = None
            with anyio.CancelScope(shield=True):
                # stop accepting, then let requests in progress finish (their events get stored)
                if server is not None:
                    server.close()
                await runner.cleanup()

    async def _run_fronts(self, sink: EventSink, *, task_status: TaskStatus[None]) -> None:
        try:
            listener = _listen_socket(self.host, self.port)
        except OSError as exc:
            raise listen_error("listen", self.host, self.port, exc) from exc
        with listener:
            self.bound_port = listener.getsockname()[1]
            self._fronts = Fronts(self, sink)
            try:
                await self._fronts.run(listener, task_status=_Announce(self, task_status))
            finally:
                self._ready = False
                self._fronts = None

    def _handler(self, sink: EventSink) -> Any:
        async def handle(request: web.Request) -> web.Response:
            answer = await answer_to(request)
            self.refused(sink, request.remote, answer)
            response = _response(answer)
            if answer[0] in (408, 501):  # the rest of this request cannot be read: close after the answer
                response.force_close()
            return response

        async def answer_to(request: web.Request) -> Answer:
            received = Received(request.remote, request.headers, request.path, request.match_info.get("trigger"))
            if not request.get(SCREENED):  # else the expect handler ran these checks (and charged the limit)
                refused = _transfer_coding(request.headers) or self.screen(received)
                if refused is not None:
                    return refused
            try:
                async with asyncio.timeout(self.body_timeout):
                    raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self.too_large()
            except TimeoutError:
                return self.body_too_slow()
            item = self.prepare(received, raw)
            if isinstance(item, tuple):
                return item
            (answer,) = await self.store(sink, [item])
            return answer

        return handle

    def _refusing(self, sink: EventSink, answer_for: Callable[[web.Request], Answer]) -> Any:
        """A handler that answers what `answer_for` says, through `refused` like every error answer."""

        async def refuse(request: web.Request) -> web.Response:
            answer = answer_for(request)
            self.refused(sink, request.remote, answer)
            return _response(answer)

        return refuse

    def refused(self, sink: EventSink, remote: str | None, answer: Answer) -> None:
        """Make an error answer visible on the router: the sender (the Connector) never retries.

        Counted always (`requests_rejected_total{input,status}`). Logged at warning, throttled per status
        and client (`LogThrottle`), unless the answer names the dead letter its request went to: that was
        logged with the dead letter.
        """
        status, body, _ = answer
        if status < 400:
            return
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

    # --- what every request goes through, whichever process speaks HTTP ----------------------------------

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
            # accept it against an empty key. Bytes that are not UTF-8 (kept by aiohttp as surrogates)
            # are compared as sent: a wrong key, not a failure
            if not given:
                return 401, {"error": f"missing API key header {self.key_header}"}, None
            if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.api_key):
                return 401, {"error": f"wrong API key in header {self.key_header}"}, None
        return None

    def prepare(self, received: Received, raw: bytes) -> Answer | Parsed | Rejected:
        """Signature, replay and decoding: an answer (refused or a repeat), an event, or bytes to dead-letter."""
        message_id = None
        if self.signing_secrets:
            if not any(verify(s, received.headers, raw, tolerance=self.tolerance) for s in self.signing_secrets):
                return 401, {"error": "missing, invalid or expired webhook signature (Standard Webhooks)"}, None
            message_id = received.headers["webhook-id"]
        headers = received.headers
        meta: dict[str, Any] = {
            "headers": {h: _header_text(headers[h]) for h in _KEPT_HEADERS if h in headers},
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
        return Parsed(event, message_id)

    async def store(self, sink: EventSink, items: Sequence[Parsed | Rejected]) -> list[Answer]:
        """Store what `prepare` made of several requests, events in one submit; one answer per item."""
        answers: list[Answer | None] = [None] * len(items)
        parsed: list[tuple[int, Parsed]] = []
        for index, item in enumerate(items):
            if isinstance(item, Parsed):
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

    async def _submit(self, sink: EventSink, items: Sequence[Parsed]) -> list[Answer]:
        try:
            results = await sink.submit([item.event for item in items])
        except SpoolFull as exc:
            return [(503, {"error": str(exc)}, {"Retry-After": str(max(1, int(exc.retry_after)))})] * len(items)
        except RouterError as exc:  # the spool cannot write (disk full...): not stored, so not acknowledged
            self.log.error("events not stored", extra={"events": len(items), "error": str(exc)})
            return [_CANNOT_STORE] * len(items)
        except Exception:
            if len(items) > 1:  # one event the core fails on must not fail the others sent with it
                return [answer for item in items for answer in await self._submit(sink, [item])]
            self.log.exception(
                "the router failed on an event; it was not stored", extra={"trigger": items[0].event.trigger}
            )
            return [(500, {"error": "the router failed on this event; it was not stored"}, None)]
        answers: list[Answer] = []
        for item, result in zip(items, results, strict=True):
            if result.status == "duplicate":  # the spool stored this webhook-id before: say so, 2xx
                assert item.message_id is not None
                answers.append(_duplicate(item.message_id))
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
        if not raw:
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


class _Limits:
    """What the in-process server's connections share: the cap, the deadlines, and how they refuse."""

    def __init__(self, webhook: WebhookInput, sink: EventSink):
        self.webhook = webhook
        self.sink = sink
        #: open connections, by aiohttp's protocol object (a request's `protocol`)
        self.open: dict[object, _Guard] = {}

    def refuse(self, transport: asyncio.BaseTransport, answer: Answer) -> None:
        """Answer a connection without a request object (past the cap, past the head deadline) and close it."""
        status, body, headers = answer
        peer = transport.get_extra_info("peername")
        self.webhook.refused(self.sink, str(peer[0]) if isinstance(peer, tuple) and peer else None, answer)
        data = orjson.dumps(body)
        if not transport.is_closing():
            cast(asyncio.Transport, transport).write(response_head(status, len(data), headers, True) + data)
        transport.close()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        guard = self.open.get(request.protocol)
        if guard is not None:
            guard.head_done()
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            if guard is not None:
                guard.in_request = False

    async def expect_handler(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: the refusals that need no body come instead of `100 Continue`."""
        guard = self.open.get(request.protocol)
        if guard is not None:
            guard.head_done()
        if request.version != HttpVersion11 or request.headers.get("Expect", "").lower() != "100-continue":
            return None
        webhook = self.webhook
        answer = _transfer_coding(request.headers)
        if answer is None and request.content_length is not None and request.content_length > webhook.max_body:
            answer = webhook.too_large()
        if answer is None and request.match_info.route.method == "POST":  # the webhook's own route
            received = Received(request.remote, request.headers, request.path, request.match_info.get("trigger"))
            answer = webhook.screen(received)
            request[SCREENED] = answer is None
        if answer is not None:
            webhook.refused(self.sink, request.remote, answer)
            response = _response(answer)
            response.force_close()  # the client may send the body anyway: it is not read
            return response
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None


class _Guard(asyncio.Protocol):
    """One connection of the in-process server: aiohttp's protocol inside what aiohttp lacks.

    At most max_connections at once (past it: 503 and close); a request head must arrive whole within
    header_timeout of its first byte (past it: 408 and close). aiohttp bounds each head line (8190 bytes,
    checked as it streams), the body (client_max_size), pushes back on pipelined requests and on answers
    the client does not take, and closes idle connections (keepalive_timeout); the handler bounds the
    body's time (body_timeout). A client that takes none of its answers for IDLE_SECONDS is dropped.
    """

    def __init__(self, limits: _Limits, inner: asyncio.Protocol):
        self.limits = limits
        self.inner: asyncio.Protocol | None = inner
        self.transport: asyncio.BaseTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        #: set while the client takes none of its answers (aiohttp waits for it to drain, and reads nothing)
        self.write_timer: asyncio.TimerHandle | None = None
        #: a request of this connection is being handled (its head is complete)
        self.in_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        limits = self.limits
        cap = limits.webhook.max_connections
        if len(limits.open) >= cap or self.inner is None:
            self.inner = None
            limits.refuse(
                transport, (503, {"error": f"too many connections (max_connections = {cap})"}, {"Retry-After": "1"})
            )
            return
        limits.open[self.inner] = self
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.timer, self.write_timer):
            if timer is not None:
                timer.cancel()
        self.timer = self.write_timer = None
        if self.inner is not None:
            self.limits.open.pop(self.inner, None)
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        self.inner.data_received(data)
        if self.timer is None and not self.in_request:  # the first bytes of a request head
            self._arm()

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.write_timer is None and self.transport is not None:
            # its answers stay unsent (and its handler waits) only so long: then the connection is dropped
            self.write_timer = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._abort)
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None
        if self.inner is not None:
            self.inner.resume_writing()

    def _abort(self) -> None:
        self.write_timer = None
        if self.transport is not None:
            cast(asyncio.Transport, self.transport).abort()  # close() would wait for the answers to drain

    def head_done(self) -> None:
        self.in_request = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _arm(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(self.limits.webhook.header_timeout, self._expired)

    def _expired(self) -> None:
        self.timer = None
        transport = self.transport
        if self.in_request or transport is None or transport.is_closing():
            return
        seconds = self.limits.webhook.header_timeout
        self.limits.refuse(transport, (408, {"error": f"request head not received within {seconds:g} s"}, None))


class _MalformedRequestLog(logging.Logger):
    """aiohttp's server logger: a request it cannot parse is a refusal (counted, one throttled line), not
    an error with a traceback that any client could write into the log as often as it likes."""

    def __init__(self, limits: _Limits):
        super().__init__("aiohttp.server")
        self.limits = limits
        self.parent = logging.getLogger("aiohttp")

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if not self._refused(exc_info, args):
            super().exception(msg, *args, exc_info=exc_info, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        # aiohttp logs a first request that is not HTTP at all (a bad method) at debug level
        if not self._refused(kwargs.get("exc_info"), args):
            super().debug(msg, *args, **kwargs)

    def _refused(self, exc: object, args: tuple[object, ...]) -> bool:
        """Count and log (throttled) aiohttp's answer to a request it could not parse; False for anything else."""
        if not isinstance(exc, HttpProcessingError):  # a failure of the router's own is logged as it is
            return False
        remote = str(args[0]) if args and args[0] is not None else None
        detail = exc.message or type(exc).__name__
        answer: Answer = (exc.code or 400, {"error": f"malformed HTTP request: {detail}"}, None)
        self.limits.webhook.refused(self.limits.sink, remote, answer)
        return True


def _listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, for the front processes to accept on."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    return socket.create_server(address, family=family, backlog=1024)


class _Announce(TaskStatus[None]):
    """Says the input listens once its front processes accept, as the in-process server does."""

    def __init__(self, webhook: WebhookInput, inner: TaskStatus[None]):
        self.webhook = webhook
        self.inner = inner

    def started(self, value: None = None) -> None:
        webhook = self.webhook
        webhook._ready = True
        webhook.log.info(
            "webhook listening",
            extra={
                "listen": f"{webhook.host}:{webhook.bound_port}",
                "path": webhook.route_path,
                "processes": webhook.processes,
            },
        )
        self.inner.started()


@hookimpl
def event_router_input_types() -> list[type[Input]]:
    return [WebhookInput]
