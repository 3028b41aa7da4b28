"""Built-in output `http`: POSTs JSON to a URL, and classifies failures for the retry policy."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import orjson
from yarl import URL

from event_router import __version__
from event_router.api import (
    SECRET_SCHEMA,
    TEXT_OR_SECRET_SCHEMA,
    ConfigError,
    Delivery,
    Output,
    PermanentError,
    PluginContext,
    RetryableError,
    Secret,
    Template,
    TemplateError,
    compile_template,
    hookimpl,
    is_credential_header,
    redact_url,
    refuse_unresolved,
    scrub,
    secret_schema,
    url_secrets,
)
from event_router.api.secrets import CREDENTIAL_HEADER_PATTERN
from event_router.web import cloudevents
from event_router.web.auth import AUTH_SCHEMA, HttpAuth, basic_credentials, build_auth
from event_router.web.http_answers import (
    CLIENT_SESSION_OPTIONS,
    STATUS_POLICY_PROPERTIES,
    StatusPolicy,
    discard_answer,
    read_answer,
    retry_after_seconds,
)
from event_router.web.signing import PLACEHOLDER_SECRET, WebhookSigner

#: event fields a URL template may use (in the path and query only)
URL_TEMPLATE_ROOTS = ("trigger", "id", "source", "data", "meta")
#: `body` modes
BODY_MODES = ("event", "webhook", "cloudevents", "cloudevents-binary")
#: redirects `follow_redirects` follows: each one is sent the same request again (see `_redirect`)
REDIRECT_STATUS: Final = frozenset({301, 302, 303, 307, 308})
#: redirects followed for one attempt; one more is a permanent failure (a loop, most likely)
MAX_REDIRECTS: Final = 5
#: characters of a receiver's answer an error message (log line, dead letter) quotes
SHOWN_ANSWER: Final = 300
#: bytes of an answer read at most; the rest is never read (the connection is closed). Far more than is
#: shown, so a secret that straddles the cut at SHOWN_ANSWER is still whole when scrubbed
ANSWER_LIMIT: Final = 16 * 1024


def _quote(value: str) -> str:
    # safe="" so a value from an event can never add a path segment, a query or a fragment
    return quote(value, safe="")


def _credential_parts(value: str) -> tuple[str, ...]:
    """What a receiver may echo of a static credential header besides the whole value: the credentials
    after an auth scheme (`Bearer xyz`, `Basic dXNlcjpwdw==`), and Basic's decoded `user:password` and
    password."""
    scheme, _, credentials = value.partition(" ")
    if not credentials or not scheme.isalpha():
        return ()
    parts: tuple[str, ...] = (credentials.strip(),)
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return parts
        parts += (decoded, decoded.partition(":")[2])
    return parts


def origin(url: URL) -> tuple[str, str, int | None]:
    """The origin of `url` (scheme, host, port with the scheme's default filled in), lower-cased."""
    return (url.scheme.lower(), (url.host or "").lower(), url.port)


def shown_origin(url: URL) -> str:
    """`url`'s origin as messages show it, without any user or password: `http://host:port/`."""
    host = url.host or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{url.scheme}://{host}:{url.port}/"


class HttpOutput(Output):
    """POSTs each delivery as JSON (`type = "http"`).

    Body (`body`): the normalised event (`event`, default), the Connector's own webhook body `{data, trigger}`
    (`webhook`), or a CloudEvent (`cloudevents`: structured, `cloudevents-binary`: `ce-*` headers); a route's
    reshaped payload replaces the event (as the CloudEvent's `data` in the CloudEvents modes). Headers:
    `Content-Type`, `Idempotency-Key: <event id>` (delivery is at-least-once: receivers drop duplicates by
    it), `X-Event-Trigger`, the configured static headers, then the `auth` header(s) and the Standard
    Webhooks signature (`signing_secret`). 2xx is success; 408, 425, 429 (honouring Retry-After), 5xx,
    timeouts and connection errors are retried; any other status is permanent and goes to the dead letters
    (a 401 with OAuth2 is first retried once with a new token); `retry_on` and `permanent_on` move
    statuses to either side (`StatusPolicy`). A redirect is a permanent failure, unless
    `follow_redirects = true`: then the same request (method, body, headers, signature) is sent again to the
    new URL if it is on the configured origin (scheme, host, port), at most MAX_REDIRECTS times; one to
    another origin is refused (permanent). Of an answer at most ANSWER_LIMIT bytes are read. TLS
    certificates are verified (`tls_verify`), against `ca_file` if given.
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
            # credential headers (Authorization, Cookie, X-API-Key, *token*...) are secrets; others are plain
            # text, or a reference when that is handier
            "headers": {
                "type": "object",
                "patternProperties": {CREDENTIAL_HEADER_PATTERN: SECRET_SCHEMA},
                "additionalProperties": TEXT_OR_SECRET_SCHEMA,
            },
            "auth": AUTH_SCHEMA,
            "body": {"enum": list(BODY_MODES)},
            "tls_verify": {"type": "boolean"},
            "ca_file": {"type": "string", "minLength": 1},
            "follow_redirects": {"type": "boolean"},
            "signing_secret": secret_schema(PLACEHOLDER_SECRET),
            **STATUS_POLICY_PROPERTIES,
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
        headers: Mapping[str, Any] = config.get("headers", {})
        self.headers = {str(k): str(v) for k, v in headers.items()}
        secret_values = [str(v) for k, v in headers.items() if is_credential_header(str(k)) or isinstance(v, Secret)]
        #: what error texts must not show besides the auth's secrets: the values of credential headers and of
        #: headers given as secret references (and their credential parts), and a password in the URL (aiohttp
        #: sends it as Basic credentials)
        self._hidden: tuple[str, ...] = (
            *secret_values,
            *(part for value in secret_values for part in _credential_parts(value)),
            *url_secrets(url),
        )
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
        #: `retry_on`, `permanent_on`: which answers are retried
        self.statuses = StatusPolicy.from_config(config)
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
        #: values to send that are unresolved references' stand-ins: `open` refuses them
        self._unresolved = [config["url"], *headers.values(), config.get("signing_secret")]
        self._session: aiohttp.ClientSession | None = None

    def guarantee(self) -> str:
        return "at least once: retried until a 2xx; repeats carry the same Idempotency-Key"

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
        refuse_unresolved(f"output {self.name}", self._unresolved)
        if self.auth is not None:
            self.auth.refuse_unresolved()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=self._ssl()),
            headers={"User-Agent": f"enmeshed-event-router/{__version__}", **self.headers},
            **CLIENT_SESSION_OPTIONS,
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
        if delivery.traceparent is not None:  # telemetry on: the receiver's spans join the attempt's trace
            headers["traceparent"] = delivery.traceparent
            if delivery.tracestate is not None:
                headers["tracestate"] = delivery.tracestate
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
            if await self._send(url, body, headers, delivery, may_refresh=may_refresh):
                return

    async def _send(
        self, url: str, body: bytes, headers: dict[str, str], delivery: Delivery, *, may_refresh: bool
    ) -> bool:
        """True once delivered (the answer's status, and its body when it was read, noted on `delivery` for the
        attempt's record); False after a 401 that fresh credentials may cure; raises otherwise.

        Redirects are never left to aiohttp: it turns a POST into a bodiless GET on 301/302/303 (whose 2xx
        would count as delivered) and sends the static headers and the signature to any host. Here a
        redirect is either refused or answered by sending the same request (method, body, headers) again,
        to the configured origin only.
        """
        assert self._session is not None
        # encoded=True: send the URL exactly as built, values percent-encoded by us
        target = URL(url, encoded=True)
        redirects = 0
        try:
            while True:
                async with self._session.request(
                    self.method, target, data=body, headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
                    if 200 <= status < 300:
                        # delivered: the answer's body is not waited for, only a small one is read
                        raw = await discard_answer(response, ANSWER_LIMIT)
                        delivery.status = status
                        delivery.answer = None if not raw else self._text(raw, response)
                        return True
                    if self.follow_redirects and status in REDIRECT_STATUS:
                        location = response.headers.get("Location")
                        await discard_answer(response, ANSWER_LIMIT)
                        target = self._redirect(url, target, status, location, redirects)
                        redirects += 1
                        continue
                    raw, _ = await read_answer(response, ANSWER_LIMIT)
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                where = self._where(url, target, redirects)
                self._fail(where, status, self._text(raw, response), retry_after, may_refresh=may_refresh)
                return False
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            detail = f"{type(exc).__name__}: {self._scrub(str(exc))}"
            raise RetryableError(f"{self.method} {self._where(url, target, redirects)} failed: {detail}") from exc

    def _where(self, url: str, target: URL, redirects: int) -> str:
        """The URL a message names: the one last requested, and where the redirects started, if any."""
        shown = redact_url(str(target))
        return f"{shown} (redirected from {redact_url(url)})" if redirects else shown

    def _text(self, raw: bytes, response: aiohttp.ClientResponse) -> str:
        """An answer's body as read (up to ANSWER_LIMIT bytes), scrubbed: messages quote its first SHOWN_ANSWER
        characters, the attempt's record its first KiB. Scrubbed before either cut, so a secret at a cut
        cannot survive in part."""
        try:
            text = raw.decode(response.charset or "utf-8", errors="replace")
        except LookupError:
            text = raw.decode("utf-8", errors="replace")
        return self._scrub(text)

    def _redirect(self, url: str, target: URL, status: int, location: str | None, redirects: int) -> URL:
        """Where a followed redirect sends the request; `PermanentError` for one not to follow."""
        where = f"{self.method} {self._where(url, target, redirects)} answered {status}"
        if redirects >= MAX_REDIRECTS:
            raise PermanentError(f"{where}: more than {MAX_REDIRECTS} redirects", code="too_many_redirects")
        try:
            if not location:
                raise ValueError("no Location")
            moved = target.join(URL(location))
            if moved.scheme not in ("http", "https") or not moved.host:
                raise ValueError("not an http(s) URL")
        except ValueError:
            raise PermanentError(f"{where}: redirect without a usable Location", code="bad_redirect") from None
        if origin(moved) != origin(target):
            # every hop stays on the configured origin, so `target`'s is the configured one
            raise PermanentError(
                f"{where}: redirect to another origin {shown_origin(moved)} refused: "
                f"secrets are only sent to the configured origin {shown_origin(target)}",
                code="redirect_refused",
            )
        # the credentials of the configured URL (sent as Basic auth) go along, never ones the receiver chose
        moved = moved.with_user(None)
        if target.user is not None:
            moved = moved.with_user(target.user).with_password(target.password)
        return moved

    def _fail(self, where: str, status: int, text: str, retry_after: float | None, *, may_refresh: bool) -> None:
        """Raise the error for a non-2xx answer from `where` (`text`: its scrubbed body); return only for a 401
        that fresh credentials may cure."""
        shown = text[:SHOWN_ANSWER]
        message = f"{self.method} {where} answered {status}" + (f": {shown}" if shown else "")
        # fresh credentials first, also when 401 is in retry_on: the retry would carry the same token
        if status == 401 and may_refresh and self.auth is not None and self.auth.unauthorized():
            return
        answer = text or None
        if self.statuses.retryable(status):
            # the status as the code too (the message names it, so log lines and dead letters stay as they are):
            # the attempt's span reports it (event_router.core.telemetry)
            raise RetryableError(message, retry_after=retry_after, code=str(status), status=status, answer=answer)
        if status == 401 and self.auth is not None:
            message += f" (credentials: {self.auth.description})"
        raise PermanentError(message, code=str(status), status=status, answer=answer)

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
