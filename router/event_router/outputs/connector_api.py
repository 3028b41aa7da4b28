"""The Connector REST endpoints the router calls: the project's own contract, written from the Connector's OpenAPI
spec (nmshd/connector `src/modules/coreHttpApi/openapi.yml`, 7.x).

One row per endpoint: method, path template (relative to the API base), the request-body fields the spec
requires, whether the endpoint takes a body at all, and the status it answers on success. The Connector output
builds its requests from this table, the test Connector (`tests/fake_connector.py`) refuses any request that
does not fit it, and a test cross-checks the table against the spec whenever the spec is at hand, so a drift
from the real Connector fails the build rather than a production call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from event_router import __version__
from event_router.api import SECRET_SCHEMA, ConfigError, redact_url, refuse_unresolved, scrub, url_secrets
from event_router.web.auth import OAUTH2_SCHEMA, ApiKeyAuth, HttpAuth, oauth2_from_table
from event_router.web.http_answers import CLIENT_SESSION_OPTIONS, read_answer, retry_after_seconds

__all__ = [
    "API_BASES",
    "API_SINCE",
    "CONNECTION_PROPERTIES",
    "ENDPOINTS",
    "Answer",
    "ConnectorClient",
    "Endpoint",
    "PathValueError",
    "connector_version",
    "missing_fields",
    "quote_segment",
]

#: `api_version` -> base path. `/api/core/v1` since Connector 7.0.0; `/api/v2` from 3.0.0 to 6.x (same sub-paths
#: for every endpoint below that the Connector version has: see `Endpoint.since`).
API_BASES: Final[Mapping[str, str]] = {"v1": "/api/core/v1", "v2": "/api/v2"}
#: the first Connector version of each API base (`/api/v1` before 3.0.0 had other paths: not supported)
API_SINCE: Final[Mapping[str, tuple[int, ...]]] = {"v1": (7, 0, 0), "v2": (3, 0, 0)}
#: the oldest Connector this table describes
OLDEST: Final = (3, 0, 0)

_PARAM = re.compile(r"\{([A-Za-z]+)\}")


class PathValueError(ValueError):
    """A value cannot be a path segment (empty, `.` or `..`): it would change which endpoint is called."""


def quote_segment(value: str) -> str:
    """`value` as exactly one path segment: `/`, `?`, `#` and `%` are percent-encoded, so event data cannot add
    a segment, a query or a fragment. `.` and `..` are refused: URL normalisation would climb out of the path.
    """
    if value in ("", ".", ".."):
        raise PathValueError(f"{value!r} cannot be a path segment")
    return quote(value, safe="")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One Connector endpoint as the spec defines it."""

    #: the spec's `operationId`
    operation: str
    method: str
    #: relative to the API base; `{name}` is a path parameter
    path: str
    #: body fields the spec requires; `"a.b"`: `b` is required inside `a` whenever `a` is sent
    required: tuple[str, ...] = ()
    #: whether the spec defines a request body
    body: bool = False
    success: int = 200
    #: the first Connector version with this endpoint as described here (method, path, body)
    since: tuple[int, ...] = OLDEST
    #: the query parameters the spec defines that the router sends (the test Connector refuses others)
    query: tuple[str, ...] = ()

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(_PARAM.findall(self.path))

    def build_path(self, values: Mapping[str, str]) -> str:
        """The path with every parameter quoted as one segment; `PathValueError` for `.`, `..` or empty."""
        return _PARAM.sub(lambda m: quote_segment(values[m.group(1)]), self.path)


def missing_fields(endpoint: Endpoint, body: Any) -> list[str]:
    """The required fields `body` lacks (all of them when it is not a JSON object)."""
    if not endpoint.required:
        return []
    if not isinstance(body, Mapping):
        return [f for f in endpoint.required if "." not in f]
    missing = []
    for field in endpoint.required:
        parent, _, child = field.partition(".")
        if not child:
            if parent not in body:
                missing.append(field)
        elif isinstance(body.get(parent), Mapping) and child not in body[parent]:
            missing.append(field)
    return missing


def _endpoints(*rows: Endpoint) -> dict[str, Endpoint]:
    return {row.operation: row for row in rows}


ENDPOINTS: Final[Mapping[str, Endpoint]] = _endpoints(
    Endpoint("sync", "POST", "/Account/Sync", success=204),
    Endpoint("getIdentityInfo", "GET", "/Account/IdentityInfo"),
    # the lists gap recovery reads (docs/recovery.md); a `DateFilter` is `createdAt=>=<date>`
    Endpoint("getMessages", "GET", "/Messages", query=("createdAt", "isOwn")),
    Endpoint("getIncomingRequests", "GET", "/Requests/Incoming", query=("createdAt", "status", "response.createdAt")),
    Endpoint("getOutgoingRequests", "GET", "/Requests/Outgoing", query=("createdAt", "status", "response.createdAt")),
    Endpoint("getRelationships", "GET", "/Relationships", query=("status",)),
    # `succeededBy=<id>`: the predecessor of a succession (a `TextFilter`, equality)
    Endpoint("getAttributes", "GET", "/Attributes", query=("createdAt", "succeededBy")),
    Endpoint("sendMessage", "POST", "/Messages", ("recipients", "content"), body=True, success=201),
    # The spec requires no key of DecideRequestRequest (the Connector's validator does want `items`).
    Endpoint("acceptIncomingRequest", "PUT", "/Requests/Incoming/{id}/Accept", body=True),
    Endpoint("rejectIncomingRequest", "PUT", "/Requests/Incoming/{id}/Reject", body=True),
    Endpoint("canAcceptIncomingRequest", "PUT", "/Requests/Incoming/{id}/CanAccept", body=True),
    Endpoint("canRejectIncomingRequest", "PUT", "/Requests/Incoming/{id}/CanReject", body=True),
    Endpoint("createOutgoingRequest", "POST", "/Requests/Outgoing", ("content", "peer"), body=True, success=201),
    # Before 5.0.0 a relationship was decided through its creation change,
    # `PUT /Relationships/{id}/Changes/{changeId}/Accept|Reject`, and could not be revoked or terminated.
    Endpoint("acceptRelationship", "PUT", "/Relationships/{id}/Accept", since=(5, 0, 0)),
    Endpoint("rejectRelationship", "PUT", "/Relationships/{id}/Reject", since=(5, 0, 0)),
    Endpoint("revokeRelationship", "PUT", "/Relationships/{id}/Revoke", since=(5, 0, 0)),
    Endpoint("terminateRelationship", "PUT", "/Relationships/{id}/Terminate", since=(5, 0, 0)),
    # Before 3.7.2 the body had to be a whole IdentityAttribute (`content.@type`, `content.owner` = own address).
    Endpoint(
        "createOwnIdentityAttribute", "POST", "/Attributes", ("content.value",), body=True, success=201, since=(3, 7, 2)
    ),
    # `{peer}` is what it takes, but the spec marks nothing required
    Endpoint(
        "notifyPeerAboutOwnIdentityAttributeSuccession",
        "POST",
        "/Attributes/{attributeId}/NotifyPeer",
        body=True,
        success=201,
        since=(3, 7, 0),
    ),
)


# --- the connection: settings and client shared by the `connector` output and input --------------------------

#: the Connector an `api_version` stands for when `connector_version` is not given
_ASSUMED: Final[Mapping[str, tuple[int, ...]]] = {"v1": (7, 0, 0), "v2": (5, 0, 0)}
VERSION_PATTERN: Final = r"^[0-9]+(\.[0-9]+){0,2}$"

#: JSON Schema properties of the keys that say which Connector to talk to and how to authenticate: the same
#: in every plugin that talks to it (`base_url` required)
CONNECTION_PROPERTIES: Final[Mapping[str, Any]] = {
    "base_url": {"type": "string", "pattern": "^https?://", "description": "the Connector, e.g. http://c:80"},
    "api_key": SECRET_SCHEMA,
    "api_key_header": {"type": "string", "minLength": 1},
    "oauth2": OAUTH2_SCHEMA,
    "api_version": {"enum": list(API_BASES)},
    "connector_version": {
        "type": "string",
        "pattern": VERSION_PATTERN,
        "description": "the Connector's version, e.g. 4.6 (default: what api_version stands for)",
    },
}


def connector_version(table: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The Connector version a plugin table is for: its `connector_version`, else what its `api_version` stands
    for ("v1": 7.0, "v2": 5.0; a 3.x/4.x Connector must say so). None when the table is broken (the plugin's own
    check reports that)."""
    declared = table.get("connector_version")
    if isinstance(declared, str) and re.fullmatch(VERSION_PATTERN, declared):
        return tuple(int(part) for part in declared.split(".")) + (0,) * (2 - declared.count("."))
    if declared is not None:
        return None
    return _ASSUMED.get(table.get("api_version", "v1"))


def _api_version_for(config: Mapping[str, Any], version: tuple[int, ...]) -> str:
    """The `api_version` of the declared `connector_version`, `version` (the one given must agree)."""
    if version < OLDEST:
        raise ConfigError(
            "connector_version",
            f"Connector {config['connector_version']} is not supported (before 3.0 the API was /api/v1 with "
            "other paths); the oldest supported is 3.0",
        )
    fits = "v1" if version >= API_SINCE["v1"] else "v2"
    given = config.get("api_version", fits)
    if given != fits:
        raise ConfigError(
            "api_version",
            f'"{given}" ({API_BASES[given]}) is not the API of Connector {config["connector_version"]}: that is '
            f'"{fits}" ({API_BASES[fits]}); drop api_version or set it to "{fits}"',
        )
    return fits


@dataclass(frozen=True, slots=True)
class Answer:
    """What the Connector answered one request: status, the body's bytes (cut at the limit: `cut`), and its
    `Retry-After` in seconds."""

    status: int
    raw: bytes
    cut: bool = False
    retry_after: float | None = None


class ConnectorClient:
    """Talks to one Connector: the connection keys of a plugin table (`CONNECTION_PROPERTIES`) checked and
    kept, and one HTTP session. A 401 with OAuth2 fetches a new token and tries once more."""

    def __init__(self, config: Mapping[str, Any], *, owner: str) -> None:
        base_url = config["base_url"].rstrip("/")
        split = urlsplit(base_url)
        if not split.hostname:
            raise ConfigError("base_url", f"{redact_url(base_url)!r} has no host")
        if split.query or split.fragment or "{{" in base_url:
            raise ConfigError("base_url", "no query, fragment or template in the base URL")
        if any(split.path.endswith(base) for base in API_BASES.values()):
            raise ConfigError("base_url", "give the Connector's root URL: the router adds /api/core/v1 (or /api/v2)")
        #: "output x", "input y": who refuses to start when a secret is unresolved
        self.owner = owner
        #: the Connector talked to: calls it lacks are refused (see `connector_version`)
        self.connector_version = connector_version(config)
        self.api_version: str = config.get("api_version", "v1")
        if "connector_version" in config:
            assert self.connector_version is not None  # the schema checked the pattern
            self.api_version = _api_version_for(config, self.connector_version)
        self.prefix = split.path + API_BASES[self.api_version]
        self.base_url = base_url
        self.auth: HttpAuth
        if "api_key" in config and "oauth2" in config:
            raise ConfigError("oauth2", "give api_key or oauth2, not both")
        if "api_key" in config:
            self.auth = ApiKeyAuth(config["api_key"], config.get("api_key_header", "X-API-KEY"))
        elif "oauth2" in config:
            if "api_key_header" in config:
                raise ConfigError("api_key_header", "only applies with api_key")
            self.auth = oauth2_from_table(config["oauth2"])
        else:
            raise ConfigError("api_key", "the Connector needs credentials: set api_key or oauth2")
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        refuse_unresolved(self.owner, [self.base_url])
        self.auth.refuse_unresolved()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            headers={"User-Agent": f"enmeshed-event-router/{__version__}", "Accept": "application/json"},
            **CLIENT_SESSION_OPTIONS,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def url(self, path: str, query: Mapping[str, str] | None = None) -> URL:
        """The URL of `path` (relative to the API base, already quoted) with `query`."""
        return URL(self.base_url + self.prefix + path, encoded=True).with_query(query or None)

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        limit: int,
    ) -> Answer:
        """Send one request; its answer, whatever the status. Connection failures and timeouts raise
        (`TimeoutError`, `aiohttp.ClientError`, `OSError`): the caller says what they mean."""
        assert self.session is not None, "open() was not called"
        sent = dict(headers or {})
        if data is not None:
            sent["Content-Type"] = "application/json"
        url = self.url(path, query)
        for may_refresh in (True, False):
            sent.update(await self.auth.headers(self.session))
            async with self.session.request(method, url, data=data, headers=sent, allow_redirects=False) as response:
                raw, cut = await read_answer(response, limit)
                answer = Answer(response.status, raw, cut, retry_after_seconds(response.headers.get("Retry-After")))
            if answer.status == 401 and may_refresh and self.auth.unauthorized():
                continue
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def scrub(self, text: str) -> str:
        """`text` without the credentials this client sends (an answer may echo them)."""
        return scrub(text, (*self.auth.secrets(), *url_secrets(self.base_url)))
