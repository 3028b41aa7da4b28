"""Built-in output `http`: POSTs JSON to a URL, and classifies failures for the retry policy."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from time import time
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import orjson
from yarl import URL

from event_router import __version__, cloudevents
from event_router.auth import AUTH_SCHEMA, HttpAuth, basic_credentials, build_auth
from event_router.errors import ConfigError, PermanentError, RetryableError
from event_router.hookspecs import hookimpl
from event_router.plugin import Delivery, Output, PluginContext
from event_router.secrets import SECRET_SCHEMA, redact_url, scrub, url_secrets
from event_router.signing import WebhookSigner
from event_router.templates import Template, TemplateError, compile_template

#: event fields a URL template may use (in the path and query only)
URL_TEMPLATE_ROOTS = ("trigger", "id", "source", "data", "meta")
#: statuses worth trying again: the receiver may recover
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
#: `body` modes
BODY_MODES = ("event", "webhook", "cloudevents", "cloudevents-binary")


def _quote(value: str) -> str:
    # safe="" so a value from an event can never add a path segment, a query or a fragment
    return quote(value, safe="")


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds, from either of its forms (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError):
        return None


class HttpOutput(Output):
    """POSTs each delivery as JSON (`type = "http"`).

    Body (`body`): the normalised event (`event`, default), the Connector's own webhook body `{data, trigger}`
    (`webhook`), or a CloudEvent (`cloudevents`: structured, `cloudevents-binary`: `ce-*` headers); a route's
    reshaped payload replaces the event (as the CloudEvent's `data` in the CloudEvents modes). Headers:
    `Content-Type`, `Idempotency-Key: <event id>` (delivery is at-least-once: receivers drop duplicates by
    it), `X-Event-Trigger`, the configured static headers, then the `auth` header(s) and the Standard
    Webhooks signature (`signing_secret`). 2xx is success; 408, 425, 429 (honouring Retry-After), 5xx,
    timeouts and connection errors are retried; any other status is permanent and goes to the dead letters
    (a 401 with OAuth2 is first retried once with a new token). Redirects are followed only with
    `follow_redirects = true`. TLS certificates are verified (`tls_verify`), against `ca_file` if given.
    """

    type_name = "http"
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["url"],
        "properties": {
            "url": {
                "type": "string",
                "pattern": "^https?://",
                "description": "may contain {{trigger}} etc. in the path",
            },
            "method": {"enum": ["POST", "PUT"]},
            "headers": {"type": "object", "additionalProperties": SECRET_SCHEMA},
            "auth": AUTH_SCHEMA,
            "body": {"enum": list(BODY_MODES)},
            "tls_verify": {"type": "boolean"},
            "ca_file": {"type": "string", "minLength": 1},
            "follow_redirects": {"type": "boolean"},
            "signing_secret": SECRET_SCHEMA,
        },
    }

    def __init__(self, config: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(config, context)
        url: str = config["url"]
        split = urlsplit(url.replace("{{", "\x00").replace("}}", "\x01"))
        if "\x00" in split.netloc:
            raise ConfigError(
                "url", "the host part of the URL cannot contain a template: event data must not pick the host"
            )
        if not split.hostname:
            raise ConfigError("url", f"{redact_url(url)!r} has no host")
        try:
            self.url: Template = compile_template(url, allowed_roots=URL_TEMPLATE_ROOTS)
        except TemplateError as exc:
            raise ConfigError("url", str(exc)) from exc
        self.method = config.get("method", "POST")
        self.headers = {str(k): str(v) for k, v in config.get("headers", {}).items()}
        #: what error texts must not show besides the auth's secrets: static header values (secrets by
        #: definition) and a password in the URL (aiohttp sends it as Basic credentials)
        self._hidden: tuple[str, ...] = (*self.headers.values(), *url_secrets(url))
        if split.password:
            sent = basic_credentials(unquote(split.username or ""), unquote(split.password))
            self._hidden += (sent.removeprefix("Basic "),)
        self.auth: HttpAuth | None = build_auth(config.get("auth"))
        if split.username or split.password:
            # aiohttp refuses such a request on every delivery: say so once, at check time
            if self.auth is not None:
                raise ConfigError("auth", "the url carries credentials (user:password@) already: use one or the other")
            if any(k.lower() == "authorization" for k in self.headers):
                raise ConfigError(
                    "headers", "the url carries credentials (user:password@) already: drop the Authorization header"
                )
        self.body_mode: str = config.get("body", "event")
        self.follow_redirects: bool = config.get("follow_redirects", False)
        self.tls_verify: bool = config.get("tls_verify", True)
        self.ca_file = context.config_dir / config["ca_file"] if "ca_file" in config else None
        if self.ca_file is not None:
            if not self.tls_verify:
                raise ConfigError("ca_file", "a CA file makes no sense with tls_verify = false")
            if not self.ca_file.is_file():
                raise ConfigError("ca_file", f"{str(self.ca_file)!r} is not a file")
        self.signer: WebhookSigner | None = None
        if "signing_secret" in config:
            try:
                self.signer = WebhookSigner(config["signing_secret"])
            except ValueError as exc:
                raise ConfigError("signing_secret", str(exc)) from None
        self._session: aiohttp.ClientSession | None = None

    def _scrub(self, text: str) -> str:
        """`text` without any of this output's credentials (a receiver may echo the headers it was sent)."""
        return scrub(text, (*self._hidden, *(self.auth.secrets() if self.auth is not None else ())))

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.tls_verify:
            return False
        if self.ca_file is not None:
            return ssl.create_default_context(cafile=str(self.ca_file))
        return True

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=self._ssl()),
            headers={"User-Agent": f"enmeshed-event-router/{__version__}", **self.headers},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url_for(self, delivery: Delivery) -> str:
        try:
            url = self.url.render(delivery.event.to_dict(), quote=_quote)
        except Exception as exc:  # a field the URL needs is missing from this event: no retry can add it
            raise PermanentError(f"cannot build URL: {exc}") from exc
        # quote() leaves dots alone: a value of exactly "." or ".." would climb out of the configured path
        if any(segment in (".", "..") for segment in urlsplit(url).path.split("/")):
            raise PermanentError(
                f"cannot build URL: {redact_url(url)!r} has a '.' or '..' path segment from event data"
            )
        return url

    def body_for(self, delivery: Delivery) -> tuple[dict[str, str], bytes]:
        """The content headers and the exact bytes to send for `delivery` in this output's body mode."""
        event = delivery.event
        if self.body_mode == "webhook" and not delivery.reshaped:
            # the Connector's own shape: no `data` key when the event has none
            webhook: dict[str, Any] = {"trigger": event.trigger}
            if event.data is not None:
                webhook = {"data": event.data, **webhook}
            return {"Content-Type": "application/json"}, orjson.dumps(webhook)
        if self.body_mode in ("cloudevents", "cloudevents-binary"):
            data = delivery.payload if delivery.reshaped else event.data
            encode = cloudevents.structured if self.body_mode == "cloudevents" else cloudevents.binary
            return encode(event, data)
        if delivery.body is not None and not delivery.reshaped:
            return {"Content-Type": "application/json"}, delivery.body
        return {"Content-Type": "application/json"}, orjson.dumps(delivery.payload)

    def _headers(self, delivery: Delivery, content: Mapping[str, str], body: bytes) -> dict[str, str]:
        headers = {
            **content,
            "Idempotency-Key": delivery.event.id,
            "X-Event-Trigger": delivery.event.trigger,
        }
        if self.body_mode == "webhook":
            # transparent in front of an existing receiver: pass the Connector's correlation id on
            correlation = (delivery.event.meta.get("headers") or {}).get("x-correlation-id")
            if isinstance(correlation, str):
                headers["x-correlation-id"] = correlation
        if self.signer is not None:
            headers.update(self.signer.headers(delivery.event.id, body))
        return headers

    async def deliver(self, delivery: Delivery) -> None:
        assert self._session is not None, "open() was not called"
        url = self.url_for(delivery)
        content, body = self.body_for(delivery)
        headers = self._headers(delivery, content, body)
        # a 401 with OAuth2 may be a revoked or rotated token: one more try with a fresh one
        for may_refresh in (True, False):
            if self.auth is not None:
                headers.update(await self.auth.headers(self._session))
            if await self._send(url, body, headers, may_refresh=may_refresh):
                return

    async def _send(self, url: str, body: bytes, headers: dict[str, str], *, may_refresh: bool) -> bool:
        """True once delivered; False after a 401 that fresh credentials may cure; raises otherwise."""
        assert self._session is not None
        try:
            # encoded=True: send the URL exactly as built, values percent-encoded by us
            async with self._session.request(
                self.method,
                URL(url, encoded=True),
                data=body,
                headers=headers,
                allow_redirects=self.follow_redirects,
            ) as response:
                if 200 <= response.status < 300:
                    await response.read()
                    return True
                # scrubbed before it is cut, so a secret at the cut cannot survive in part
                text = self._scrub(await response.text(errors="replace"))[:300]
                shown = redact_url(url)
                message = f"{self.method} {shown} answered {response.status}" + (f": {text}" if text else "")
                if response.status in RETRYABLE_STATUS or response.status >= 500:
                    raise RetryableError(message, retry_after=retry_after_seconds(response.headers.get("Retry-After")))
                if response.status == 401 and may_refresh and self.auth is not None and self.auth.unauthorized():
                    return False
                if response.status == 401 and self.auth is not None:
                    message += f" (credentials: {self.auth.description})"
                raise PermanentError(message, code=str(response.status))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            detail = self._scrub(str(exc))
            raise RetryableError(f"{self.method} {redact_url(url)} failed: {type(exc).__name__}: {detail}") from exc

    def describe(self, delivery: Delivery) -> dict[str, Any]:
        content, body = self.body_for(delivery)
        described: dict[str, Any] = {"method": self.method, "url": redact_url(self.url_for(delivery))}
        if self.body_mode == "cloudevents-binary":
            described["headers"] = content
        described["body"] = orjson.loads(body) if body else None
        return described


@hookimpl
def event_router_output_types() -> list[type[Output]]:
    return [HttpOutput]
