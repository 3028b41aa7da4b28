"""Built-in input `webhook`: receives what the Connector's webhooks module POSTs.

The Connector sends `POST <url>` with `{"trigger": "<namespace>", "data": {...}}` (no `data` key when the
event has none), `Content-Type: application/json`, the target's static headers, `x-correlation-id`, and
the API key in `x-api-key` (header name configurable). It never retries: this input answers 2xx only
once the event is durably stored, and says exactly what is wrong otherwise.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from aiohttp import web
from anyio.abc import TaskStatus

from event_router.batching import Rejected
from event_router.builtin.webhook_front import tls_context
from event_router.builtin.webhook_fronts import Fronts
from event_router.errors import ConfigError, RouterError, SpoolFull
from event_router.event import Event, SourceMessage
from event_router.hookspecs import hookimpl
from event_router.listen import listen_error, parse_listen
from event_router.plugin import EventSink, Input, PluginContext
from event_router.ratelimit import LogThrottle, RateLimiter
from event_router.secrets import SECRET_SCHEMA, secret_schema
from event_router.signing import PLACEHOLDER_SECRET, decode_secret, verify

#: request headers kept in the event's meta; credentials never are
_KEPT_HEADERS = ("x-correlation-id", "user-agent", "content-type", "webhook-id")


def _allowed(remote: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:  # a Unix socket or a proxy that hides the peer: not a listed network
        return False
    return any(address in network for network in networks)


#: (HTTP status, JSON body, extra headers): what a request gets, whichever process answers it
Answer = tuple[int, dict[str, Any], dict[str, str] | None]
_CANNOT_STORE: Answer = (503, {"error": "the router cannot store events right now"}, {"Retry-After": "5"})


def _response(answer: Answer) -> web.Response:
    status, body, headers = answer
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _duplicate(message_id: str) -> Answer:
    """A Standard Webhooks message already stored: 2xx, so the sender stops retrying it."""
    return 200, {"status": "duplicate", "webhook_id": message_id}, None


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
        #: refusals are logged at most once a minute per (status, client), with how many were held back
        self._refusals = LogThrottle()

    def tls_paths(self) -> dict[str, str] | None:
        """The `tls` table with absolute paths (a front process reads the files itself)."""
        if not self.tls:
            return None
        return {key: str((self.context.config_dir / value).resolve()) for key, value in self.tls.items()}

    def is_ready(self) -> bool:
        return self._ready and (self._fronts is None or self._fronts.is_ready())

    async def run(self, sink: EventSink, *, task_status: TaskStatus[None]) -> None:
        if self.processes:
            await self._run_fronts(sink, task_status=task_status)
            return
        app = web.Application(client_max_size=self.max_body)
        app.router.add_post(self.route_path, self._handler(sink))
        # aiohttp's own 404 and 405 are plain text: these answer in JSON, as a front process does; as routes,
        # not a middleware, they cost the POSTs nothing
        app.router.add_route("*", self.route_path, self._refusing(sink, _not_post))
        app.router.add_route("*", "/{path:.*}", self._refusing(sink, _no_webhook))
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        await runner.setup()
        try:
            tls = self.tls_paths()
            site = web.TCPSite(
                runner,
                self.host,
                self.port,
                reuse_address=True,
                ssl_context=tls_context(tls) if tls else None,
            )
            try:
                await site.start()
            except OSError as exc:
                raise listen_error("listen", self.host, self.port, exc) from exc
            server = site._server
            sockets: Sequence[Any] = getattr(server, "sockets", ()) or ()
            self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
            self._ready = True
            self.log.info(
                "webhook listening",
                extra={"listen": f"{self.host}:{self.bound_port}", "path": self.route_path},
            )
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self._ready = False
            with anyio.CancelScope(shield=True):
                # stops accepting, then lets requests in progress finish (their events get stored)
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
            return _response(answer)

        async def answer_to(request: web.Request) -> Answer:
            received = Received(request.remote, request.headers, request.path, request.match_info.get("trigger"))
            refused = self.screen(received)
            if refused is not None:
                return refused
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self.too_large()
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
            # accept it against an empty key
            if not given or not hmac.compare_digest(given.encode(), self.api_key):
                return 401, {"error": f"missing or wrong API key in header {self.key_header}"}, None
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
            "headers": {h: headers[h] for h in _KEPT_HEADERS if h in headers},
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
