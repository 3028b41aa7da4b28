"""HTTP authentication shared by the outputs (`http`, `connector`): the forms the Connector's webhooks offer,
plus bearer and basic.

One of, in an output's table (an inline table on one line: TOML's cannot span lines):

```toml
auth = { type = "api_key", key = { env = "CRM_KEY" }, header = "x-api-key" }
auth = { type = "bearer", token = { env = "CRM_TOKEN" } }
auth = { type = "basic", username = "router", password = { env = "CRM_PASSWORD" } }
```

or as the output's sub-table (`[outputs.crm.auth]`: `type = "oauth2"`, `token_url`, `client_id`,
`client_secret = { env = "S" }`, `scope`, `audience`, a line each).

OAuth2 is the client-credentials grant as the Connector does it: a form-encoded POST with the client id and
secret in HTTP Basic, status 200 with `access_token` (and `expires_in`) expected, the token cached and fetched
anew once less than 10 seconds of it remain. A token endpoint that is down or answers 5xx is a retryable
failure; one that refuses the client (400/401/403) is permanent, since no retry fixes wrong credentials.
"""

from __future__ import annotations

import base64
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any, Final

import aiohttp
import anyio
import orjson

from event_router.api import (
    SECRET_SCHEMA,
    ConfigError,
    PermanentError,
    RetryableError,
    redact_url,
    refuse_unresolved,
    scrub,
    url_secrets,
)
from event_router.api.secrets import Unresolved
from event_router.web.http_answers import read_answer

__all__ = [
    "AUTH_SCHEMA",
    "OAUTH2_SCHEMA",
    "ApiKeyAuth",
    "BasicAuth",
    "BearerAuth",
    "HttpAuth",
    "OAuth2ClientCredentials",
    "build_auth",
]

#: fetch a new token when less than this many seconds of the cached one remain (the Connector's margin)
REFRESH_MARGIN: Final = 10.0
#: bytes of a token endpoint's answer read at most (a token answer is well under 1 KiB, a JWT a few KiB)
TOKEN_ANSWER_LIMIT: Final = 64 * 1024
#: token endpoint answers worth trying again later
_RETRYABLE_TOKEN_STATUS: Final = frozenset({408, 425, 429})

_URL = {"type": "string", "pattern": "^https?://"}
#: the OAuth2 keys without `type` (the Connector output's `oauth2 = {...}` table)
OAUTH2_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["token_url", "client_id", "client_secret"],
    "properties": {
        "token_url": _URL,
        "client_id": {"type": "string", "minLength": 1},
        "client_secret": SECRET_SCHEMA,
        "scope": {"type": "string", "minLength": 1},
        "audience": {"type": "string", "minLength": 1},
    },
}


#: the keys each auth type takes (besides `type`), required ones first
_AUTH_KEYS: Final[Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "api_key": (("key",), ("header",)),
    "oauth2": (("token_url", "client_id", "client_secret"), ("scope", "audience")),
    "bearer": (("token",), ()),
    "basic": (("username", "password"), ()),
}

#: JSON Schema of an output's `auth = {...}` table. Every key is declared at the top (not inside a `oneOf`) so
#: the core finds and resolves the secrets; which keys go with which type is checked by `build_auth`.
AUTH_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type"],
    "properties": {
        "type": {"enum": list(_AUTH_KEYS)},
        "key": SECRET_SCHEMA,
        "header": {"type": "string", "minLength": 1},
        **OAUTH2_SCHEMA["properties"],
        "token": SECRET_SCHEMA,
        "username": {"type": "string", "minLength": 1},
        "password": SECRET_SCHEMA,
    },
    "allOf": [
        {"if": {"properties": {"type": {"const": kind}}}, "then": {"required": list(required)}}
        for kind, (required, _optional) in _AUTH_KEYS.items()
    ],
}


class HttpAuth(ABC):
    """Adds credentials to one request. Instances are shared by all deliveries of an output."""

    #: what a log line or error may say about the credentials (never the credentials)
    description: str = ""

    @abstractmethod
    async def headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        """The header(s) to send; may raise `RetryableError`/`PermanentError` (OAuth2 token trouble)."""

    def unauthorized(self) -> bool:
        """The receiver answered 401. True when sending again with fresh credentials may succeed."""
        return False

    def refuse_unresolved(self) -> None:
        """Raise `UnresolvedSecretError` when a credential is an unresolved reference's stand-in."""
        if self._unresolved:
            refuse_unresolved(self.description or type(self).__name__, self.secrets())

    @cached_property
    def _unresolved(self) -> bool:
        # looked at once, not per request: the credentials an auth is built with never change (a fetched
        # OAuth2 token is no stand-in, and is only fetched after this first look)
        return any(isinstance(value, Unresolved) for value in self.secrets())

    @abstractmethod
    def secrets(self) -> tuple[str, ...]:
        """Every string that gives the credentials away: the configured secret and what is sent for it (an
        encoded header value, a token). Error texts from the other side go through `scrub` with these, since
        a server may echo the headers it was sent."""


class ApiKeyAuth(HttpAuth):
    """A static key in a header (the Connector's `ApiKey` authentication; its REST API's `X-API-KEY`)."""

    def __init__(self, key: str, header: str = "x-api-key") -> None:
        self._key = key
        self.header = header
        self.description = f"API key in header {header}"

    async def headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        self.refuse_unresolved()
        return {self.header: self._key}

    def secrets(self) -> tuple[str, ...]:
        return (self._key,)


class BearerAuth(HttpAuth):
    """A static token: `Authorization: Bearer <token>`."""

    description = "bearer token"

    def __init__(self, token: str) -> None:
        self._token = token
        self._value = f"Bearer {token}"

    async def headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        self.refuse_unresolved()
        return {"Authorization": self._value}

    def secrets(self) -> tuple[str, ...]:
        return (self._token,)


def basic_credentials(username: str, password: str) -> str:
    """The `Authorization` value of HTTP Basic (RFC 7617, UTF-8)."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


class BasicAuth(HttpAuth):
    """HTTP Basic: `Authorization: Basic base64(user:password)`."""

    def __init__(self, username: str, password: str) -> None:
        self._password = password
        self._value = basic_credentials(username, password)
        self.description = f"basic auth as {username!r}"

    async def headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        self.refuse_unresolved()
        return {"Authorization": self._value}

    def secrets(self) -> tuple[str, ...]:
        # the base64 part alone: a server may echo it without the "Basic " in front
        return (self._password, self._value.removeprefix("Basic "))


class OAuth2ClientCredentials(HttpAuth):
    """OAuth2 client-credentials grant with a cached token, refreshed before it expires.

    One token request at a time: deliveries that need a token while one is being fetched wait for it.
    `clock` is injectable so that tests can move time instead of sleeping.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | None = None,
        audience: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        refresh_margin: float = REFRESH_MARGIN,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self.audience = audience
        self.clock = clock
        self.refresh_margin = refresh_margin
        #: the token URL as logs and errors show it (a password in it masked)
        self.shown_url = redact_url(token_url)
        self.description = f"OAuth2 client {client_id!r} at {self.shown_url}"
        self._token: str | None = None
        #: clock() value when the cached token stops being usable; None: use it once (no expires_in given)
        self._expires_at: float | None = None
        self._lock = anyio.Lock()
        #: token requests made (for metrics and tests)
        self.fetches = 0

    def _valid(self) -> bool:
        return (
            self._token is not None
            and self._expires_at is not None
            and self._expires_at - self.clock() >= self.refresh_margin
        )

    async def headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token(session)}"}

    async def token(self, session: aiohttp.ClientSession) -> str:
        """The cached token, or a new one when less than `refresh_margin` seconds of it remain."""
        self.refuse_unresolved()
        if self._valid():
            assert self._token is not None
            return self._token
        async with self._lock:
            if self._valid():  # another delivery fetched it while this one waited
                assert self._token is not None
                return self._token
            token, lifetime = await self._fetch(session)
            self._token = token
            self._expires_at = None if lifetime is None else self.clock() + lifetime
            return token

    def secrets(self) -> tuple[str, ...]:
        client = basic_credentials(self.client_id, self._secret).removeprefix("Basic ")
        return (self._secret, client, *url_secrets(self.token_url)) + ((self._token,) if self._token else ())

    def unauthorized(self) -> bool:
        # the receiver refused the token (revoked, keys rotated...): a fresh one may be accepted
        had_token = self._token is not None
        self._token = None
        self._expires_at = None
        return had_token

    async def _fetch(self, session: aiohttp.ClientSession) -> tuple[str, float | None]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        if self.audience:
            form["audience"] = self.audience
        self.fetches += 1
        try:
            async with session.post(
                self.token_url,
                data=form,
                headers={
                    "Accept": "application/json",
                    "Authorization": basic_credentials(self.client_id, self._secret),
                },
                allow_redirects=False,
            ) as response:
                raw, _ = await read_answer(response, TOKEN_ANSWER_LIMIT)
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            detail = scrub(str(exc), self.secrets())
            raise RetryableError(
                f"OAuth2 token endpoint {self.shown_url} unreachable: {type(exc).__name__}: {detail}"
            ) from exc
        # an identity provider may quote what it was sent (the client's Basic credentials) in its answer
        detail = scrub(_oauth_error(raw), self.secrets())
        if status in _RETRYABLE_TOKEN_STATUS or status >= 500:
            raise RetryableError(f"OAuth2 token endpoint {self.shown_url} answered {status}{detail}")
        if status in (400, 401, 403):
            raise PermanentError(
                f"OAuth2 token endpoint {self.shown_url} rejected client {self.client_id!r} ({status}{detail}): "
                "check client_id, client_secret and scope",
                code="oauth2_client_rejected",
            )
        if status != 200:
            raise PermanentError(
                f"OAuth2 token endpoint {self.shown_url} answered {status}{detail}; expected 200",
                code="oauth2_token_failed",
            )
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            answer = None
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise PermanentError(
                f"OAuth2 token endpoint {self.shown_url} answered 200 without an access_token",
                code="oauth2_token_failed",
            )
        lifetime = answer.get("expires_in") if isinstance(answer, dict) else None
        if isinstance(lifetime, str) and lifetime.isdigit():  # some servers send it as a string
            lifetime = int(lifetime)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float):
            lifetime = None
        return token, lifetime


def _oauth_error(raw: bytes) -> str:
    """`: invalid_client (description)` from an RFC 6749 error answer; empty when there is none."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(answer, dict) or not isinstance(answer.get("error"), str):
        return ""
    description = answer.get("error_description")
    return f": {answer['error']}" + (f" ({str(description)[:200]})" if isinstance(description, str) else "")


def oauth2_from_table(table: Mapping[str, Any]) -> OAuth2ClientCredentials:
    """An `OAuth2ClientCredentials` from a table valid against `OAUTH2_SCHEMA` (secrets already resolved)."""
    return OAuth2ClientCredentials(
        table["token_url"],
        table["client_id"],
        table["client_secret"],
        scope=table.get("scope"),
        audience=table.get("audience"),
    )


def build_auth(table: Mapping[str, Any] | None, *, key: str = "auth") -> HttpAuth | None:
    """The auth for a table valid against `AUTH_SCHEMA` (secrets resolved by the core); None without one.

    Raises `ConfigError` for a key that does not belong to the table's type.
    """
    if table is None:
        return None
    kind = table["type"]
    required, optional = _AUTH_KEYS[kind]
    allowed = ("type", *required, *optional)
    for name in table:
        if name not in allowed:
            raise ConfigError(
                f"{key}.{name}", f"does not apply to auth type {kind!r} (its keys: {', '.join(allowed[1:])})"
            )
    if kind == "api_key":
        return ApiKeyAuth(table["key"], table.get("header", "x-api-key"))
    if kind == "oauth2":
        return oauth2_from_table(table)
    if kind == "bearer":
        return BearerAuth(table["token"])
    if ":" in table["username"]:
        raise ConfigError(f"{key}.username", "a basic-auth user name cannot contain ':'")
    return BasicAuth(table["username"], table["password"])
