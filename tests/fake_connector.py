"""A fake standing in for the enmeshed Connector, and a fake OAuth2 token endpoint, for the tests.

The real Connector cannot run here: it needs its Backbone (and an identity on it). This fake is an aiohttp
server on a real loopback socket that enforces the real contract as the project knows it: every request is
checked against the project's endpoint table (`event_router.outputs.connector_api.ENDPOINTS`, which a test
cross-checks against the Connector's OpenAPI spec): the path under the API base (matched on the raw,
still-encoded path, as the Connector's router does, so `%2F` never splits a segment), the method, the
request-body fields the spec requires, that endpoints without a body get none, the id formats, and the API
key (or a bearer token issued by `FakeTokenEndpoint`). It answers with the spec's envelopes:
`{"result": ...}` on success and `{"error": {id, code, message, docs, time}}` otherwise.

State: the lists gap recovery reads (`GET /Messages`, `/Requests/Incoming`, `/Requests/Outgoing`,
`/Relationships`, `/Attributes`) answer from what the fake holds, narrowed by the Connector's filter syntax
(`createdAt=>=2026-08-20T00:00:00.000Z`, `status=Completed`, `isOwn=true`); a query parameter the endpoint
table does not name for a list is refused. The scripted changes (`receive_message`, `receive_request`,
`decide_incoming_request`, `complete_outgoing_request`, `change_relationship`, `delete_peer`,
`create_attribute`, `succeed_attribute`, `delete_attribute`) change that
state and raise the event as the Connector does: one POST per webhook URL in `webhooks`, `{"trigger",
"data"}`, no retry; a failed POST is counted in `lost`, and the event is gone. `webhook_delay` holds each
POST back after the state changed.

What it does not do: keep state for the action endpoints (every well-formed id exists unless `missing()`
says otherwise) or delay 401s by 1-4 s like the Connector.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import itertools
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web
from multidict import CIMultiDict

from event_router.api.event import utc_now
from event_router.outputs.connector_api import API_BASES, ENDPOINTS, Endpoint, missing_fields

SELF = "did:e:connector.example.org:dids:0b1f2e3d4c5b6a79881726"
#: id formats of the path parameters (prefix + 17 alphanumerics)
ID_PATTERNS = {
    "/Requests/": re.compile(r"REQ[A-Za-z0-9]{17}"),
    "/Relationships/": re.compile(r"REL[A-Za-z0-9]{17}"),
    "/Attributes/": re.compile(r"ATT[A-Za-z0-9]{17}"),
}
_counter = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}{next(_counter):017d}"


def error_body(code: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "id": new_id("ERR"),
            "code": code,
            "message": message,
            "docs": "https://enmeshed.eu/integrate/error-codes#" + code,
            "time": utc_now(),
        }
    }


def _answer(status: int, body: Any = None) -> web.Response:
    if body is None:
        return web.Response(status=status)
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


@dataclass
class Seen:
    """One request the fake received, whatever it answered."""

    method: str
    #: as sent, still percent-encoded, without the query
    raw_path: str
    query: str
    #: case-insensitive, as HTTP headers are
    headers: CIMultiDict[str]
    body: Any
    status: int = 0
    operation: str | None = None
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class _Scripted:
    status: int
    code: str | None
    raw: bytes | None
    headers: dict[str, str]


class _Server:
    def __init__(self) -> None:
        self.app = web.Application()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Any:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class FakeTokenEndpoint(_Server):
    """An OAuth2 token endpoint (client-credentials grant, client authenticated with HTTP Basic)."""

    def __init__(self, client_id: str = "router", client_secret: str = "s3cret", expires_in: int = 3600) -> None:
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in: int | None = expires_in
        #: answer every request with this status (and an RFC 6749 error body) instead of a token
        self.status: int | None = None
        self.requests: list[dict[str, Any]] = []
        #: token -> monotonic expiry
        self.tokens: dict[str, float] = {}
        self.app.router.add_post("/token", self._token)

    def valid(self, token: str) -> bool:
        return self.tokens.get(token, 0) > time.monotonic()

    def revoke_all(self) -> None:
        self.tokens.clear()

    async def _token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        user, password = _basic(request.headers.get("Authorization", ""))
        self.requests.append({"form": form, "client_id": user, "content_type": request.content_type})
        if self.status is not None:
            return _answer(self.status, {"error": "server_error" if self.status >= 500 else "invalid_client"})
        if form.get("grant_type") != "client_credentials":
            return _answer(400, {"error": "unsupported_grant_type"})
        if user != self.client_id or not hmac.compare_digest(password, self.client_secret):
            return _answer(401, {"error": "invalid_client", "error_description": "unknown client or bad secret"})
        token = f"tok-{len(self.requests)}"
        lifetime = self.expires_in if self.expires_in is not None else 60
        self.tokens[token] = time.monotonic() + lifetime
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return _answer(200, body)


def _basic(header: str) -> tuple[str, str]:
    if not header.startswith("Basic "):
        return "", ""
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return "", ""
    return user, password


class FakeConnector(_Server):
    """The Connector's REST API as far as the endpoint table goes (see the module docstring)."""

    def __init__(
        self,
        *,
        api_key: str | None = "connector-key",
        api_key_header: str = "X-API-KEY",
        api_version: str = "v1",
        tokens: FakeTokenEndpoint | None = None,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.api_key_header = api_key_header
        self.base = API_BASES[api_version]
        self.tokens = tokens
        self.requests: list[Seen] = []
        #: seconds to wait before answering (to make the router time out)
        self.delay = 0.0
        self._script: dict[str, list[_Scripted]] = {}
        self._missing: set[str] = set()
        #: the state the list endpoints answer from, per operation
        self.state: dict[str, list[dict[str, Any]]] = {
            "getMessages": [],
            "getIncomingRequests": [],
            "getOutgoingRequests": [],
            "getRelationships": [],
            "getAttributes": [],
        }
        #: where events are POSTed (the Connector's webhooks module); `(trigger, data)` of those lost
        self.webhooks: list[str] = []
        self.webhook_headers: dict[str, str] = {}
        self.lost: list[tuple[str, Any]] = []
        #: seconds between a change of the state and its webhook POST (the Connector's event bus and HTTP
        #: client take some; a look that lists the change meanwhile races its live event)
        self.webhook_delay = 0.0
        self.emitted: list[tuple[str, Any]] = []
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    # --- state and events ---------------------------------------------------------------------------

    async def emit(self, trigger: str, data: Any) -> None:
        """Raise an event: POST it once to each webhook; a failure loses it, as the Connector's module does."""
        import aiohttp

        self.emitted.append((trigger, data))
        if self.webhook_delay:
            await asyncio.sleep(self.webhook_delay)
        body = orjson.dumps({"trigger": trigger, "data": data})
        async with aiohttp.ClientSession() as session:
            for url in self.webhooks:
                try:
                    async with session.post(
                        url, data=body, headers={"Content-Type": "application/json", **self.webhook_headers}
                    ) as response:
                        ok = 200 <= response.status < 300
                except (aiohttp.ClientError, OSError):
                    ok = False
                if not ok:
                    self.lost.append((trigger, data))

    async def receive_message(self, *, own: bool = False) -> dict[str, Any]:
        peer = "did:e:partner.example.org:dids:4a5b6c7d8e9f0a1b2c3d4e"
        message = {
            "id": new_id("MSG"),
            "isOwn": own,
            "content": {
                "@type": "Mail",
                "to": [peer if own else SELF],
                "cc": [],
                "subject": "hello",
                "body": "text",
                "bodyFormat": "PlainText",
            },
            "createdBy": SELF if own else peer,
            "createdByDevice": new_id("DVC"),
            "recipients": [{"address": peer if own else SELF, "relationshipId": new_id("REL")}],
            "createdAt": utc_now(),
            "attachments": [],
        }
        self.state["getMessages"].append(message)
        await self.emit("transport.messageSent" if own else "transport.messageReceived", message)
        return message

    async def receive_request(self) -> dict[str, Any]:
        request_id = new_id("REQ")
        request = {
            "id": request_id,
            "isOwn": False,
            "peer": "did:e:partner.example.org:dids:4a5b6c7d8e9f0a1b2c3d4e",
            "createdAt": utc_now(),
            "status": "Open",
            "content": {
                "@type": "Request",
                "id": request_id,
                "items": [{"@type": "ConsentRequestItem", "mustBeAccepted": True, "consent": "ok"}],
            },
            "source": {"type": "Message", "reference": new_id("MSG")},
        }
        self.state["getIncomingRequests"].append(request)
        await self.emit("consumption.incomingRequestReceived", request)
        return request

    async def complete_outgoing_request(self) -> dict[str, Any]:
        request_id = new_id("REQ")
        request = {
            "id": request_id,
            "isOwn": True,
            "peer": "did:e:partner.example.org:dids:4a5b6c7d8e9f0a1b2c3d4e",
            "createdAt": utc_now(),
            "status": "Completed",
            "content": {
                "@type": "Request",
                "id": request_id,
                "items": [{"@type": "ConsentRequestItem", "mustBeAccepted": True, "consent": "ok"}],
            },
            "source": {"type": "Message", "reference": new_id("MSG")},
            "response": {
                "createdAt": utc_now(),
                "content": {
                    "@type": "Response",
                    "result": "Accepted",
                    "requestId": request_id,
                    "items": [{"@type": "AcceptResponseItem", "result": "Accepted"}],
                },
                "source": {"type": "Message", "reference": new_id("MSG")},
            },
        }
        self.state["getOutgoingRequests"].append(request)
        await self.emit(
            "consumption.outgoingRequestStatusChanged",
            {"request": request, "oldStatus": "Open", "newStatus": "Completed"},
        )
        return request

    async def change_relationship(self, relationship_id: str | None = None, status: str = "Pending") -> dict[str, Any]:
        """Create a pending relationship (no id), or move one to `status` with a new audit-log entry."""
        peer = "did:e:partner.example.org:dids:4a5b6c7d8e9f0a1b2c3d4e"
        found = [r for r in self.state["getRelationships"] if r["id"] == relationship_id]
        if found:
            relationship = found[0]
            old = relationship["status"]
            relationship["status"] = status
            reason = {"Active": "AcceptanceOfCreation", "Rejected": "RejectionOfCreation"}.get(status, "Termination")
            entry = {"createdAt": utc_now(), "createdBy": SELF, "reason": reason, "oldStatus": old, "newStatus": status}
            relationship["auditLog"] = [*relationship["auditLog"], entry]
        else:
            relationship = {
                "id": relationship_id or new_id("REL"),
                "templateId": new_id("RLT"),
                "status": "Pending",
                "peer": peer,
                "peerIdentity": {"address": peer, "publicKey": "cHVibGljLWtleQ"},
                "creationContent": {"@type": "ArbitraryRelationshipCreationContent", "value": {}},
                "auditLog": [{"createdAt": utc_now(), "createdBy": peer, "reason": "Creation", "newStatus": "Pending"}],
            }
            self.state["getRelationships"].append(relationship)
        # the event carries a copy: a later change must not alter what was sent
        await self.emit("transport.relationshipChanged", orjson.loads(orjson.dumps(relationship)))
        return relationship

    async def decide_incoming_request(self, request_id: str, status: str) -> dict[str, Any]:
        """Move an incoming request on to `status`, with a response from `Decided` on, raising
        incomingRequestStatusChanged as the Connector does for each step."""
        request = next(r for r in self.state["getIncomingRequests"] if r["id"] == request_id)
        old = request["status"]
        request["status"] = status
        if status in ("Decided", "Completed") and "response" not in request:
            request["response"] = {
                "createdAt": utc_now(),
                "content": {
                    "@type": "Response",
                    "result": "Accepted",
                    "requestId": request_id,
                    "items": [{"@type": "AcceptResponseItem", "result": "Accepted"}],
                },
            }
        copy = orjson.loads(orjson.dumps(request))
        await self.emit(
            "consumption.incomingRequestStatusChanged", {"request": copy, "oldStatus": old, "newStatus": status}
        )
        return request

    async def delete_peer(self, relationship_id: str, status: str = "ToBeDeleted") -> dict[str, Any]:
        """The peer of a relationship starts deleting its identity (`ToBeDeleted`, deleted at the end of a
        14-day grace period) or is `Deleted`: peerDeletionInfo changes, the audit log does not."""
        relationship = next(r for r in self.state["getRelationships"] if r["id"] == relationship_id)
        grace = time.time() + 14 * 86400 if status == "ToBeDeleted" else time.time()
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(grace)) + f".{int(grace * 1000) % 1000:03d}Z"
        relationship["peerDeletionInfo"] = {"deletionStatus": status, "deletionDate": when}
        trigger = "transport.peerToBeDeleted" if status == "ToBeDeleted" else "transport.peerDeleted"
        await self.emit(trigger, orjson.loads(orjson.dumps(relationship)))
        return relationship

    async def create_attribute(self, value: str = "Alice") -> dict[str, Any]:
        """An own identity attribute is created (runtime 7.x shape): attributeCreated."""
        attribute = {
            "@type": "OwnIdentityAttribute",
            "id": new_id("ATT"),
            "createdAt": utc_now(),
            "content": {"@type": "IdentityAttribute", "owner": SELF, "value": {"@type": "GivenName", "value": value}},
        }
        self.state["getAttributes"].append(attribute)
        await self.emit("consumption.attributeCreated", orjson.loads(orjson.dumps(attribute)))
        return attribute

    async def succeed_attribute(self, predecessor_id: str, value: str) -> dict[str, Any]:
        """The attribute gets a successor: the successor `succeeds` it, it is `succeededBy` the successor,
        and only attributeSucceeded `{predecessor, successor}` is raised (not attributeCreated)."""
        predecessor = next(a for a in self.state["getAttributes"] if a["id"] == predecessor_id)
        successor = {
            **orjson.loads(orjson.dumps(predecessor)),
            "id": new_id("ATT"),
            "createdAt": utc_now(),
            "succeeds": predecessor_id,
        }
        successor["content"]["value"]["value"] = value
        predecessor["succeededBy"] = successor["id"]
        self.state["getAttributes"].append(successor)
        data = {"predecessor": predecessor, "successor": successor}
        await self.emit("consumption.attributeSucceeded", orjson.loads(orjson.dumps(data)))
        return successor

    async def delete_attribute(self, attribute_id: str) -> dict[str, Any]:
        """The attribute is removed, then attributeDeleted raised: the state keeps nothing of it."""
        attribute = next(a for a in self.state["getAttributes"] if a["id"] == attribute_id)
        self.state["getAttributes"].remove(attribute)
        await self.emit("consumption.attributeDeleted", attribute)
        return attribute

    # --- scripting ----------------------------------------------------------------------------------

    def fail(
        self,
        operation: str,
        status: int,
        code: str | None = None,
        *,
        times: int = 1,
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next `times` well-formed requests to `operation` with `status` (an error envelope)."""
        assert operation in ENDPOINTS, operation
        self._script.setdefault(operation, []).extend([_Scripted(status, code, raw, dict(headers or {}))] * times)

    def missing(self, record_id: str) -> None:
        """Requests naming this id get 404 error.connector.recordNotFound."""
        self._missing.add(record_id)

    def calls(self, operation: str | None = None) -> list[Seen]:
        """The requests that fitted the contract (and `operation`), in order."""
        return [s for s in self.requests if s.operation is not None and operation in (None, s.operation)]

    # --- handling -----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        raw_path, _, query = request.raw_path.partition("?")
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = {"__not_json__": raw.decode(errors="replace")}
        seen = Seen(request.method, raw_path, query, CIMultiDict(request.headers), body)
        self.requests.append(seen)
        if self.delay:
            await asyncio.sleep(self.delay)
        status, answer = self._respond(request, seen, raw)
        seen.status = status
        return answer

    def _respond(self, request: web.Request, seen: Seen, raw: bytes) -> tuple[int, web.Response]:
        if not self._authorised(request):
            where = self.api_key_header if self.tokens is None else "Authorization: Bearer"
            return self._error(401, "error.connector.unauthorized", f"missing or wrong credentials in {where}")
        if not seen.raw_path.startswith(self.base + "/"):
            return self._error(404, "error.fake.unknownRoute", f"{seen.raw_path} is not under {self.base}")
        found = list(_match(seen.raw_path[len(self.base) :]))
        if not found:
            return self._error(404, "error.fake.unknownRoute", f"no endpoint {seen.raw_path}")
        chosen = [(e, p) for e, p in found if e.method == seen.method]
        if not chosen:
            return self._error(405, "error.fake.methodNotAllowed", f"{seen.method} {seen.raw_path}")
        endpoint, params = chosen[0]
        seen.params = params
        if endpoint.body:
            if raw and request.content_type != "application/json":
                return self._error(400, "error.fake.contentType", "the body must be application/json")
            if "__not_json__" in (seen.body or {}) or (raw and not isinstance(seen.body, dict)):
                return self._error(400, "error.connector.validation.invalidPropertyValue", "body is not an object")
            absent = missing_fields(endpoint, seen.body or {})
            if absent:
                return self._error(
                    400, "error.connector.validation.missingProperty", f"must have required property {absent[0]!r}"
                )
        elif raw:
            return self._error(400, "error.fake.unexpectedBody", f"{endpoint.operation} takes no body")
        # the lists the router queries itself: only the filters the endpoint table names (and the spec defines)
        unknown = sorted(set(request.query) - set(endpoint.query)) if endpoint.query else []
        if unknown:
            return self._error(
                400, "error.connector.validation.invalidPropertyValue", f"unknown query parameter {unknown[0]!r}"
            )
        for name, value in params.items():
            pattern = next((p for prefix, p in ID_PATTERNS.items() if endpoint.path.startswith(prefix)), None)
            if pattern is not None and not pattern.fullmatch(value):
                return self._error(
                    400, "error.connector.validation.invalidPropertyValue", f"{name} {value!r} is not a valid id"
                )
            if value in self._missing:
                return self._error(404, "error.connector.recordNotFound", f"{value} not found")
        seen.operation = endpoint.operation
        scripted = self._script.get(endpoint.operation)
        if scripted:
            step = scripted.pop(0)
            if step.raw is not None:
                return step.status, web.Response(status=step.status, body=step.raw, headers=step.headers)
            code = step.code or ("error.platform.unexpected" if step.status >= 500 else "error.fake.scripted")
            status, response = self._error(step.status, code, "scripted failure")
            response.headers.update(step.headers)
            return status, response
        if endpoint.operation in self.state:
            items = [i for i in self.state[endpoint.operation] if _matches(i, request.query)]
            return endpoint.success, _answer(endpoint.success, {"result": items})
        return endpoint.success, _answer(endpoint.success, _success(endpoint, params, seen.body))

    def _authorised(self, request: web.Request) -> bool:
        if self.tokens is not None:
            header = request.headers.get("Authorization", "")
            return header.startswith("Bearer ") and self.tokens.valid(header[7:])
        if self.api_key is None:
            return True
        return hmac.compare_digest(request.headers.get(self.api_key_header, ""), self.api_key)

    @staticmethod
    def _error(status: int, code: str, message: str) -> tuple[int, web.Response]:
        return status, _answer(status, error_body(code, message))


def _value(item: Mapping[str, Any], path: str) -> Any:
    value: Any = item
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _matches(item: Mapping[str, Any], query: Mapping[str, str]) -> bool:
    """The Connector's query filters, as far as the router uses them: `>=`, `>`, `<=`, `<` on dates (compared
    as text, as the Connector does), `!` (not equal), else equality; booleans as `true`."""
    for name, wanted in query.items():
        value = _value(item, name)
        text = "true" if value is True else "false" if value is False else value
        for op, test in ((">=", str.__ge__), ("<=", str.__le__), (">", str.__gt__), ("<", str.__lt__)):
            if wanted.startswith(op):
                if not isinstance(text, str) or not test(text, wanted[len(op) :]):
                    return False
                break
        else:
            if wanted.startswith("!"):
                if text == wanted[1:]:
                    return False
            elif text != wanted:
                return False
    return True


def _match(path: str) -> Iterator[tuple[Endpoint, dict[str, str]]]:
    """Endpoints whose template fits the raw path; parameters decoded only after the split, like Express."""
    segments = path.split("/")
    for endpoint in ENDPOINTS.values():
        template = endpoint.path.split("/")
        if len(template) != len(segments):
            continue
        params = {}
        for want, got in zip(template, segments, strict=True):
            if want.startswith("{"):
                if not got:
                    break
                params[want[1:-1]] = unquote(got)
            elif want != got:
                break
        else:
            yield endpoint, params


def _success(endpoint: Endpoint, params: Mapping[str, str], body: Any) -> Any:
    """A result shaped like the Connector's for `endpoint` (enough for the router; not every DTO key)."""
    now = utc_now()
    op = endpoint.operation
    if op == "sync":
        return None
    if op == "getIdentityInfo":
        return {"result": {"address": SELF, "publicKey": "cHVibGljLWtleQ"}}
    if op == "sendMessage":
        return {
            "result": {
                "id": new_id("MSG"),
                "isOwn": True,
                "content": body["content"],
                "createdBy": SELF,
                "createdByDevice": new_id("DVC"),
                "recipients": [{"address": r} for r in body["recipients"]],
                "createdAt": now,
                "attachments": body.get("attachments", []),
            }
        }
    if op in ("acceptIncomingRequest", "rejectIncomingRequest"):
        return {
            "result": {
                "id": params["id"],
                "isOwn": False,
                "peer": "did:e:partner.example.org:dids:4a5b6c7d8e9f0a1b2c3d4e",
                "createdAt": now,
                "status": "Decided",
                "content": {"@type": "Request", "id": params["id"], "items": []},
                "response": {
                    "createdAt": now,
                    "content": {
                        "@type": "Response",
                        "result": "Accepted" if op.startswith("accept") else "Rejected",
                        "requestId": params["id"],
                        "items": body.get("items", []) if isinstance(body, dict) else [],
                    },
                },
            }
        }
    if op in ("canAcceptIncomingRequest", "canRejectIncomingRequest"):
        return {"result": {"isSuccess": True, "items": []}}
    if op == "createOutgoingRequest":
        request_id = new_id("REQ")
        return {
            "result": {
                "id": request_id,
                "isOwn": True,
                "peer": body["peer"],
                "createdAt": now,
                "status": "Draft",
                "content": {"@type": "Request", "id": request_id, **body["content"]},
            }
        }
    if op.endswith("Relationship"):
        status = {"accept": "Active", "reject": "Rejected", "revoke": "Revoked", "terminate": "Terminated"}
        return {
            "result": {
                "id": params["id"],
                "templateId": new_id("RLT"),
                "status": status[op.removesuffix("Relationship")],
                "peer": "did:e:partner.example.org:dids:4a5b6c7d8e9f0a1b2c3d4e",
                "auditLog": [],
            }
        }
    if op == "createOwnIdentityAttribute":
        return {
            "result": {
                "@type": "OwnIdentityAttribute",
                "id": new_id("ATT"),
                "createdAt": now,
                "content": {"@type": "IdentityAttribute", "owner": SELF, **body["content"]},
            }
        }
    return {"result": {}}
