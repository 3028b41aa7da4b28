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
from urllib.parse import quote

__all__ = ["API_BASES", "API_SINCE", "ENDPOINTS", "Endpoint", "PathValueError", "missing_fields", "quote_segment"]

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
