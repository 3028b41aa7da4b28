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
import ssl
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import orjson
from aiohttp import web
from anyio.abc import TaskStatus

from event_router.errors import ConfigError, RouterError, SpoolFull
from event_router.event import Event
from event_router.hookspecs import hookimpl
from event_router.listen import parse_listen
from event_router.plugin import EventSink, Input, PluginContext
from event_router.ratelimit import RateLimiter
from event_router.secrets import SECRET_SCHEMA
from event_router.signing import decode_secret, verify

#: request headers kept in the event's meta; credentials never are
_KEPT_HEADERS = ("x-correlation-id", "user-agent", "content-type", "webhook-id")


def _allowed(remote: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:  # a Unix socket or a proxy that hides the peer: not a listed network
        return False
    return any(address in network for network in networks)


def _json(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


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
                "items": SECRET_SCHEMA,
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
        self.api_key: bytes | None = str(key).encode() if key is not None else None
        self.key_header = config.get("api_key_header", "x-api-key")
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
        #: webhook-ids stored recently: a repeat within the tolerance is answered, not stored again
        self._seen: OrderedDict[str, float] = OrderedDict()
        self.bound_port: int | None = None
        self._ready = False

    def _signature_ok(self, request: web.Request, raw: bytes) -> bool:
        return any(verify(s, request.headers, raw, tolerance=self.tolerance) for s in self.signing_secrets)

    def _remember(self, message_id: str) -> None:
        now = time.monotonic()
        self._seen[message_id] = now
        while self._seen and (len(self._seen) > 100_000 or next(iter(self._seen.values())) < now - self.tolerance):
            self._seen.popitem(last=False)

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        base = self.context.config_dir
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(base / self.tls["cert_file"], base / self.tls["key_file"])
        if "client_ca_file" in self.tls:
            ctx.load_verify_locations(base / self.tls["client_ca_file"])
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def is_ready(self) -> bool:
        return self._ready

    async def run(self, sink: EventSink, *, task_status: TaskStatus[None]) -> None:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_post(self.route_path, self._handler(sink))
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True, ssl_context=self._ssl_context())
            try:
                await site.start()
            except OSError as exc:
                raise OSError(
                    exc.errno, f"input {self.name}: cannot listen on {self.host}:{self.port}: {exc.strerror}"
                ) from exc
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

    def _handler(self, sink: EventSink) -> Any:
        async def handle(request: web.Request) -> web.Response:
            remote = request.remote or ""
            if self.allow and not _allowed(remote, self.allow):
                return _json(403, {"error": f"client {remote} is not in allow_networks"})
            if self.limiter is not None and (wait := self.limiter.allow(remote)) > 0:
                return _json(429, {"error": "rate limit exceeded"}, {"Retry-After": str(max(1, math.ceil(wait)))})
            if self.api_key is not None:
                given = request.headers.get(self.key_header, "").encode()
                if not hmac.compare_digest(given, self.api_key):
                    return _json(401, {"error": f"missing or wrong API key in header {self.key_header}"})
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return _json(413, {"error": f"body larger than {self.max_body} bytes"})
            message_id = None
            if self.signing_secrets:
                if not self._signature_ok(request, raw):
                    return _json(401, {"error": "missing, invalid or expired webhook signature (Standard Webhooks)"})
                message_id = request.headers["webhook-id"]
                if message_id in self._seen:  # the sender retried what we already stored: say so, store nothing
                    return _json(200, {"status": "duplicate", "webhook_id": message_id})
            meta: dict[str, Any] = {
                "headers": {h: request.headers[h] for h in _KEPT_HEADERS if h in request.headers},
                "remote": request.remote,
                "path": request.path,
            }
            path_trigger = request.match_info.get("trigger")
            try:
                event = self._decode(raw, path_trigger, meta)
            except ValueError as exc:
                try:
                    dlid = await sink.reject(raw, str(exc), trigger=path_trigger, meta=meta)
                except RouterError:
                    return _json(503, {"error": "the router cannot store events right now"}, {"Retry-After": "5"})
                return _json(400, {"error": str(exc), "dead_letter": dlid})
            try:
                (result,) = await sink.submit([event])
            except SpoolFull as exc:
                return _json(503, {"error": str(exc)}, {"Retry-After": str(max(1, int(exc.retry_after)))})
            except RouterError as exc:  # the spool cannot write (disk full...): not stored, so not acknowledged
                self.log.error("event not stored", extra={"trigger": event.trigger, "error": str(exc)})
                return _json(503, {"error": "the router cannot store events right now"}, {"Retry-After": "5"})
            if message_id is not None:
                self._remember(message_id)
            body: dict[str, Any] = {"id": result.event_id, "status": result.status}
            if result.errors:
                body["errors"] = list(result.errors)
            if result.status == "dead_lettered":
                body["dead_letter"] = result.dead_letter_id
                return _json(422, body)
            return _json(202, body)

        return handle

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


@hookimpl
def event_router_input_types() -> list[type[Input]]:
    return [WebhookInput]
