"""Built-in output `connector`: talks back to the Connector's REST API as a route's `action` says.

```toml
[outputs.connector]
type = "connector"
base_url = "http://127.0.0.1:8080"
api_key = { env = "CONNECTOR_API_KEY" }

[[routes]]
name = "auto-accept requests from partner"
match = { trigger = ["consumption.incomingRequestReceived"], "data.peer" = ["did:e:..."] }
to = ["connector"]
action = { name = "accept_request", id = "{{ data.id }}", items = [{ accept = true }] }
```

Every string in the action table is a template over the event (`{{ data.id }}`); values are always strings.
Path parameters are percent-encoded as one segment (`.`/`..` refused), so event data cannot change which
endpoint is called. Requests are built from the project's endpoint table (`event_router.outputs.connector_api`).
The Connector's `{result}`/`{error}` envelope is parsed: 4xx with an `error.code` is a permanent failure with
that code; 408/425/429, 5xx, timeouts and connection errors are retried; 401 is permanent ("API key rejected").
`retry_on` and `permanent_on` move statuses to either side, as for the http output (`StatusPolicy`).
With `emit_results = true` each action's outcome becomes an event (`router.actionSucceeded` /
`router.actionFailed`) that routes can match, to chain steps.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import anyio
import jsonschema_rs
import orjson
from yarl import URL

from event_router.api import (
    Delivery,
    DeliveryError,
    Event,
    MissingValueError,
    Output,
    PermanentError,
    PluginContext,
    RetryableError,
    SpoolFull,
    SubmitResult,
    Template,
    TemplateError,
    compile_template,
    hookimpl,
    redact_url,
)
from event_router.outputs.connector_api import (
    CONNECTION_PROPERTIES,
    ENDPOINTS,
    ConnectorClient,
    Endpoint,
    PathValueError,
    connector_version,
    quote_segment,
)
from event_router.web.auth import ApiKeyAuth
from event_router.web.http_answers import STATUS_POLICY_PROPERTIES, StatusPolicy

__all__ = ["ACTIONS", "ConnectorOutput", "SubmitEvents", "check_action", "connector_version"]

#: what an output may use to hand new events to the core (see `ConnectorOutput.submit`)
SubmitEvents = Callable[[Sequence[Event]], Awaitable[list[SubmitResult]]]

#: fields of `Event.to_dict()` a parameter template may start with
TEMPLATE_ROOTS: Final = ("id", "trigger", "source", "received_at", "data", "meta")
SUCCEEDED: Final = "router.actionSucceeded"
#: `source` of result events: they come from the router itself, not from an input (whose names they must
#: not share, or a route matching an input's `source` would see them)
RESULT_SOURCE: Final = "router"
FAILED: Final = "router.actionFailed"
#: result events caused by result events stop here: a route that feeds results back into a failing action
#: must not loop forever
MAX_CHAIN_DEPTH: Final = 8
#: bytes of a Connector answer read at most: the webhook input's default `max_body_bytes`, the largest event
#: the router takes by default (an answer becomes part of a result event). Real answers (a created request,
#: a message, a page of a list) are a few KiB; a longer one is cut, and parsed as text, not JSON
MAX_ANSWER: Final = 4 * 1024 * 1024
#: bytes of an error answer scrubbed for the attempt's record, which keeps the first KiB of them
_ANSWER_SCRUBBED: Final = 16 * 1024
#: characters of an answer that is not JSON (or was cut) that are kept
_TEXT_KEPT: Final = 1000
#: keys of an action table that are not templates
_LITERAL_KEYS: Final = frozenset({"name", "method", "path"})

_TEXT: Final = {"type": "string", "minLength": 1}
_TEXTS: Final = {"type": "array", "minItems": 1, "items": _TEXT}
_OBJECT: Final = {"type": "object"}
#: decision items are positional, one per request item; a group is `{ items = [...] }`
_DECISION_ITEMS: Final = {"type": "array", "items": _OBJECT}


def _action_schema(required: Sequence[str], properties: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", *required],
        "properties": {"name": {"type": "string"}, **properties},
        **extra,
    }


_ID_ACTION: Final = _action_schema(["id"], {"id": _TEXT})
#: JSON Schema of each action's table (templates are strings, so they validate as strings)
ACTIONS: Final[Mapping[str, dict[str, Any]]] = {
    "sync": _action_schema([], {}),
    "send_message": _action_schema(
        ["recipients"],
        {
            "recipients": {"oneOf": [_TEXT, _TEXTS]},
            "content": _OBJECT,
            "mail": {
                "type": "object",
                "additionalProperties": False,
                "required": ["subject", "body"],
                "properties": {
                    "to": {"oneOf": [_TEXT, _TEXTS]},
                    "cc": {"oneOf": [_TEXT, {"type": "array", "items": _TEXT}]},
                    "subject": {"type": "string"},
                    "body": {"type": "string"},
                    "body_format": {"enum": ["PlainText", "Markdown"]},
                },
            },
            "attachments": {"type": "array", "items": _TEXT},
        },
        oneOf=[{"required": ["content"]}, {"required": ["mail"]}],
    ),
    "accept_request": _action_schema(["id", "items"], {"id": _TEXT, "items": _DECISION_ITEMS}),
    "reject_request": _action_schema(["id", "items"], {"id": _TEXT, "items": _DECISION_ITEMS}),
    "create_outgoing_request": _action_schema(
        ["peer", "content"],
        {
            "peer": _TEXT,
            "content": {"type": "object", "required": ["items"], "properties": {"items": {"type": "array"}}},
            "send": {"type": "boolean"},
        },
    ),
    "accept_relationship": _ID_ACTION,
    "reject_relationship": _ID_ACTION,
    "revoke_relationship": _ID_ACTION,
    "terminate_relationship": _ID_ACTION,
    "create_attribute": _action_schema(
        [],
        {
            "content": {"type": "object", "required": ["value"], "properties": {"value": _OBJECT}},
            "value": _OBJECT,
            "tags": {"type": "array", "items": _TEXT},
        },
        oneOf=[{"required": ["content"]}, {"required": ["value"]}],
    ),
    "call": _action_schema(
        ["method", "path"],
        {
            "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE"]},
            "path": {"type": "string", "pattern": "^/"},
            "body": {},
            "query": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    ),
}


#: each action's schema for jsonschema_rs, which finds a valid action fast; jsonschema words the errors
_CHECKS: Final = {name: jsonschema_rs.Draft202012Validator(schema) for name, schema in ACTIONS.items()}


@functools.cache
def _validator(name: str) -> Any:
    """jsonschema's validator of action `name` (its errors carry what the wording needs), made and imported
    only for an action that is not valid: every router imports this module with the built-in plugins, and
    jsonschema would be several MB it holds for nothing."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(ACTIONS[name])


def _valid(name: str, action: Mapping[str, Any]) -> bool:
    """Whether jsonschema_rs finds `action` valid; a value it cannot take (a TOML date) is left to jsonschema."""
    try:
        return bool(_CHECKS[name].is_valid(dict(action)))
    except (ValueError, TypeError):
        return False


#: actions that are one call to one endpoint with an `id` path parameter and no body
_ID_ENDPOINTS: Final = {
    "accept_relationship": "acceptRelationship",
    "reject_relationship": "rejectRelationship",
    "revoke_relationship": "revokeRelationship",
    "terminate_relationship": "terminateRelationship",
}


#: the endpoints each action calls (`call` reaches any path: its version is the user's business)
_ACTION_ENDPOINTS: Final[Mapping[str, tuple[str, ...]]] = {
    "sync": ("sync",),
    "send_message": ("sendMessage",),
    "accept_request": ("acceptIncomingRequest",),
    "reject_request": ("rejectIncomingRequest",),
    "create_outgoing_request": ("createOutgoingRequest", "sendMessage"),
    **{name: (operation,) for name, operation in _ID_ENDPOINTS.items()},
    "create_attribute": ("createOwnIdentityAttribute",),
}
#: what to do instead on a Connector that is too old for an action
_OLDER_CONNECTOR: Final[Mapping[str, str]] = {
    "accept_relationship": 'decide the relationship\'s creation change instead: action = { name = "call", '
    'method = "PUT", path = "/Relationships/{{ data.id }}/Changes/{{ data.changes.0.id }}/Accept", '
    "body = { content = {} } }",
    "reject_relationship": 'decide the relationship\'s creation change instead: action = { name = "call", '
    'method = "PUT", path = "/Relationships/{{ data.id }}/Changes/{{ data.changes.0.id }}/Reject", '
    "body = { content = {} } }",
    "revoke_relationship": "that Connector cannot revoke a relationship",
    "terminate_relationship": "that Connector cannot terminate a relationship",
    "create_attribute": 'that Connector wants the whole IdentityAttribute: action = { name = "call", method = "POST", '
    'path = "/Attributes", body = { content = { "@type" = "IdentityAttribute", owner = "<own address>", '
    "value = { ... } } } }",
}


def _version_text(version: tuple[int, ...]) -> str:
    """`5.0`, `3.7.2`: a zero patch level is left out."""
    return ".".join(map(str, version[:2] if version[2:] == (0,) else version))


def _too_old(name: str, version: tuple[int, ...]) -> list[tuple[str, str]]:
    for operation in _ACTION_ENDPOINTS.get(name, ()):
        endpoint = ENDPOINTS[operation]
        if version < endpoint.since:
            return [
                (
                    "action",
                    f"{name!r} needs Connector {_version_text(endpoint.since)} or later ({endpoint.method} "
                    f'{endpoint.path}); the output\'s connector_version is "{_version_text(version)}": '
                    f"{_OLDER_CONNECTOR.get(name, 'use a call action with the path that Connector has')}",
                )
            ]
    return []


@functools.lru_cache(maxsize=4096)
def _template(text: str) -> Template:
    return compile_template(text, allowed_roots=TEMPLATE_ROOTS)


def _where(parts: Sequence[Any]) -> str:
    out = "action"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def check_action(options: Mapping[str, Any], version: tuple[int, ...] | None = None) -> list[tuple[str, str]]:
    """(key path, message) for everything wrong with a route's `action`; empty when it is usable.

    `version`: the Connector the output talks to (`connector_version`); an action whose endpoint that version
    does not have is refused.
    """
    action = options.get("action")
    if action is None:
        return [("action", 'a route to a connector output needs an action, e.g. action = { name = "sync" }')]
    if not isinstance(action, Mapping):
        return [("action", "must be a table, e.g. { name = ... }")]
    name = action.get("name")
    if not isinstance(name, str) or name not in ACTIONS:
        return [("action.name", f"{name!r} is not an action (actions: {', '.join(sorted(ACTIONS))})")]
    problems = []
    errors = [] if _valid(name, action) else _validator(name).iter_errors(dict(action))
    for error in sorted(errors, key=lambda e: [str(p) for p in e.path]):
        message = error.message
        if error.validator == "required":
            message = message.replace("is a required property", "is required but missing")
        elif error.validator == "additionalProperties":
            allowed = sorted(ACTIONS[name]["properties"])
            message = f"{message} (keys of {name}: {', '.join(allowed)})"
        elif error.validator == "oneOf" and not list(error.path) and "oneOf" in ACTIONS[name]:
            keys = [next(iter(branch["required"])) for branch in ACTIONS[name]["oneOf"]]
            message = f"give exactly one of {' or '.join(keys)}"
        problems.append((_where(error.absolute_path), message))
    if name == "call" and isinstance(action.get("path"), str):
        path = action["path"]
        if any(c in path for c in "?#"):
            problems.append(("action.path", "no query or fragment in the path; use query = { ... }"))
        if any(segment in (".", "..") for segment in path.split("/")):
            problems.append(("action.path", "'.' and '..' segments are not allowed"))
    for where, text in _strings(action, ()):
        try:
            _template(text)
        except TemplateError as exc:
            problems.append((_where(where), str(exc)))
    if version is not None:
        problems += _too_old(name, version)
    return problems


def _strings(node: Any, where: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str]]:
    """Every template string in an action table, with its path."""
    if isinstance(node, str):
        return [(where, node)]
    if isinstance(node, Mapping):
        # `path` is a template too, only rendered differently (each value encoded as a segment)
        skip = _LITERAL_KEYS - {"path"} if not where else frozenset()
        return [found for k, v in node.items() if k not in skip for found in _strings(v, (*where, k))]
    if isinstance(node, list | tuple):
        return [found for i, v in enumerate(node) for found in _strings(v, (*where, i))]
    return []


def _render(node: Any, event: Mapping[str, Any], where: tuple[Any, ...] = ()) -> Any:
    """`node` with every string rendered as a template over `event` (strict: a missing field is an error)."""
    if isinstance(node, str):
        try:
            return _template(node).render(event)
        except MissingValueError as exc:
            raise _ParameterError(f"{_where(where)}: {exc}") from None
    if isinstance(node, Mapping):
        return {k: _render(v, event, (*where, k)) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_render(v, event, (*where, i)) for i, v in enumerate(node)]
    return node


class _ParameterError(ValueError):
    """An action parameter cannot be filled from this event."""


@dataclass(frozen=True, slots=True)
class Call:
    """One request to the Connector."""

    method: str
    #: relative to the API base, parameters already encoded
    path: str
    body: Any = None
    has_body: bool = False
    query: Mapping[str, str] | None = None
    endpoint: Endpoint | None = None


def _endpoint_call(operation: str, body: Any = None, **params: str) -> Call:
    endpoint = ENDPOINTS[operation]
    try:
        path = endpoint.build_path(params)
    except PathValueError as exc:
        raise _ParameterError(f"action.{next(iter(params), 'id')}: {exc}") from None
    return Call(endpoint.method, path, body, endpoint.body, endpoint=endpoint)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _first_call(name: str, p: Mapping[str, Any], event: Mapping[str, Any], raw: Mapping[str, Any]) -> Call:
    """The (first) request of action `name` with rendered parameters `p`."""
    if name == "sync":
        return _endpoint_call("sync")
    if name == "send_message":
        recipients = _as_list(p["recipients"])
        content = p["content"] if "content" in p else _mail(p["mail"], recipients)
        body = {"recipients": recipients, "content": content}
        if "attachments" in p:
            body["attachments"] = p["attachments"]
        return _endpoint_call("sendMessage", body)
    if name in ("accept_request", "reject_request"):
        operation = "acceptIncomingRequest" if name == "accept_request" else "rejectIncomingRequest"
        return _endpoint_call(operation, {"items": p["items"]}, id=p["id"])
    if name == "create_outgoing_request":
        return _endpoint_call("createOutgoingRequest", {"content": p["content"], "peer": p["peer"]})
    if name in _ID_ENDPOINTS:
        return _endpoint_call(_ID_ENDPOINTS[name], id=p["id"])
    if name == "create_attribute":
        content = p.get("content") or {"value": p["value"], **({"tags": p["tags"]} if "tags" in p else {})}
        return _endpoint_call("createOwnIdentityAttribute", {"content": content})
    # call: the path is rendered with every substituted value encoded as one segment
    try:
        path = _template(raw["path"]).render(event, quote=quote_segment)
    except MissingValueError as exc:
        raise _ParameterError(f"action.path: {exc}") from None
    except PathValueError as exc:
        raise _ParameterError(f"action.path: a value from the event {exc}") from None
    return Call(p["method"], path, p.get("body"), "body" in p, p.get("query"))


def _mail(mail: Mapping[str, Any], recipients: list[str]) -> dict[str, Any]:
    """The Connector's Mail content from the `mail` helper table (`to` defaults to the recipients)."""
    return {
        "@type": "Mail",
        "to": _as_list(mail["to"]) if "to" in mail else recipients,
        "cc": _as_list(mail.get("cc", [])),
        "subject": mail["subject"],
        "body": mail["body"],
        "bodyFormat": mail.get("body_format", "PlainText"),
    }


@dataclass(slots=True)
class _Answer:
    """What the Connector said to one call."""

    call: Call
    status: int
    #: the parsed JSON body (`{"result": ...}` or `{"error": ...}`), None when empty or not JSON
    body: Any

    def error(self) -> Mapping[str, Any]:
        error = self.body.get("error") if isinstance(self.body, Mapping) else None
        return error if isinstance(error, Mapping) else {}

    def result(self) -> Any:
        return self.body.get("result") if isinstance(self.body, Mapping) else None


@dataclass(slots=True)
class _Run:
    """One delivery's action: its name, the calls made so far and how they ended."""

    name: str
    answers: list[_Answer] = field(default_factory=list)


class ConnectorOutput(Output):
    """Calls the Connector's REST API (`type = "connector"`): one action per delivery, chosen by the route."""

    type_name = "connector"
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["base_url"],
        "properties": {**CONNECTION_PROPERTIES, "emit_results": {"type": "boolean"}, **STATUS_POLICY_PROPERTIES},
    }

    def __init__(self, config: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(config, context)
        self.client = ConnectorClient(config, owner=f"output {self.name}")
        #: the Connector this output talks to: actions it lacks are refused (see `connector_version`)
        self.connector_version = self.client.connector_version
        self.api_version = self.client.api_version
        self.prefix = self.client.prefix
        self.base_url = self.client.base_url
        self.auth = self.client.auth
        self.emit_results: bool = config.get("emit_results", False)
        #: `retry_on`, `permanent_on`: which answers are retried
        self.statuses = StatusPolicy.from_config(config)
        #: how this output hands result events to the core. None: `PluginContext.submit` (which the App sets
        #: after constructing the plugins) is used; set it to hand results somewhere else (tests do)
        self.submit: SubmitEvents | None = None
        self._warned_no_submit = False
        #: create_outgoing_request + send: the created request's content per delivery id, so a retry after a
        #: failed send does not create the request again (kept in memory: after a restart it is created anew)
        self._created: dict[int, Any] = {}
        self._checked: dict[bytes, list[tuple[str, str]]] = {}

    def guarantee(self) -> str:
        # the REST API takes no idempotency key: a call repeated after a lost answer is a second call
        return "at least once, with no idempotency key: a repeated send_message or create_* makes a second one"

    @classmethod
    def check_route_options(
        cls, options: Mapping[str, Any], output: Mapping[str, Any] | None = None
    ) -> list[tuple[str, str]]:
        """What is wrong with a route's `action` for this output, as (key path, message); for `check`."""
        return check_action(options, connector_version(output or {}))

    async def open(self) -> None:
        await self.client.open()

    async def close(self) -> None:
        await self.client.close()

    # --- building -------------------------------------------------------------------------------------

    def _action(self, delivery: Delivery) -> Mapping[str, Any]:
        # each distinct action table is checked once, not at every delivery (a check validates a schema)
        key = orjson.dumps(delivery.route_options.get("action"), option=orjson.OPT_SORT_KEYS)
        problems = self._checked.get(key)
        if problems is None:
            if len(self._checked) >= 1024:
                self._checked.clear()
            problems = self._checked[key] = check_action(delivery.route_options, self.connector_version)
        if problems:
            text = "; ".join(f"{where}: {message}" for where, message in problems)
            raise PermanentError(f"route {delivery.route!r}: {text}", code="invalid_action")
        action: Mapping[str, Any] = delivery.route_options["action"]
        return action

    def _first(self, action: Mapping[str, Any], event: Mapping[str, Any]) -> Call:
        params = {k: v for k, v in action.items() if k not in _LITERAL_KEYS}
        rendered = _render(params, event)
        if "method" in action:
            rendered["method"] = action["method"]
        return _first_call(action["name"], rendered, event, action)

    def url(self, call: Call) -> URL:
        return self.client.url(call.path, call.query)

    def describe(self, delivery: Delivery) -> dict[str, Any]:
        action = self._action(delivery)
        try:
            call = self._first(action, delivery.event.to_dict())
        except _ParameterError as exc:
            raise PermanentError(str(exc), code="action_parameters") from None
        described: dict[str, Any] = {
            "action": action["name"],
            "method": call.method,
            "url": redact_url(str(self.url(call))),
        }
        if call.has_body:
            described["body"] = call.body
        if action["name"] == "create_outgoing_request" and action.get("send"):
            described["then"] = "POST /Messages to the peer with the created request's content"
        return described

    # --- delivering -----------------------------------------------------------------------------------

    async def deliver(self, delivery: Delivery) -> None:
        assert self.client.session is not None, "open() was not called"
        run = _Run(name=str((delivery.route_options.get("action") or {}).get("name", "?")))
        try:
            await self._perform(delivery, run)
        except DeliveryError as exc:
            if not exc.retryable:
                self._created.pop(delivery.id, None)
                await self._emit(delivery, run, exc)
            raise
        self._created.pop(delivery.id, None)
        await self._emit(delivery, run, None)

    async def _perform(self, delivery: Delivery, run: _Run) -> None:
        action = self._action(delivery)
        event = delivery.event.to_dict()
        try:
            call = self._first(action, event)
        except _ParameterError as exc:
            raise PermanentError(f"route {delivery.route!r}: {exc}", code="action_parameters") from None
        sending = action["name"] == "create_outgoing_request" and action.get("send", False)
        if sending and delivery.id in self._created:
            content = self._created[delivery.id]  # created by an earlier attempt whose send failed
        else:
            answer = await self._call(call, delivery, run)
            if not sending:
                return
            result = answer.result()
            content = result.get("content") if isinstance(result, Mapping) else None
            if not isinstance(content, Mapping):
                cut = isinstance(answer.body, Mapping) and "cut_at_bytes" in answer.body
                raise PermanentError(
                    "the Connector created the request but its answer has no content to send"
                    + (f" (the answer was longer than {MAX_ANSWER} bytes and was cut)" if cut else "")
                )
            self._created[delivery.id] = content
        peer = str(call.body["peer"])
        await self._call(_endpoint_call("sendMessage", {"recipients": [peer], "content": content}), delivery, run)

    async def _call(self, call: Call, delivery: Delivery, run: _Run) -> _Answer:
        """Send one request; the answer on success, a `DeliveryError` otherwise (401 retried once with OAuth2)."""
        where = f"{call.method} {self.url(call).path}"
        try:
            sent = await self.client.request(
                call.method,
                call.path,
                query=call.query,
                data=orjson.dumps(call.body) if call.has_body else None,
                headers=_headers(delivery),
                limit=MAX_ANSWER,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise RetryableError(f"{where} failed: {type(exc).__name__}: {self._scrub(str(exc))}") from exc
        answer = _Answer(call, sent.status, _json(sent.raw, cut=sent.cut))
        run.answers.append(answer)
        if 200 <= sent.status < 300:
            # the attempt's record keeps the status only: a successful answer is the Connector's record of
            # what it did (messages, attributes), personal data the event's own trace has no need of
            delivery.status = sent.status
            return answer
        raise self._failure(where, answer, sent.retry_after, sent.raw)

    def _failure(self, where: str, answer: _Answer, retry_after: float | None, raw: bytes) -> DeliveryError:
        error = answer.error()
        code = error.get("code") if isinstance(error.get("code"), str) else None
        # a proxy or a misbehaving server may echo the credentials it was sent in its error message
        detail = f": {code}: {self._scrub(str(error.get('message', '')))}" if code else ""
        message = f"{where} answered {answer.status}{detail}"
        # for the attempt's record: the start of the error body as the Connector sent it, scrubbed before it is
        # cut to a KiB (read far past that, so a secret across the KiB's end is still whole when scrubbed)
        said = self._scrub(raw[:_ANSWER_SCRUBBED].decode("utf-8", "replace")) or None
        if self.statuses.retryable(answer.status):
            return RetryableError(message, retry_after=retry_after, code=code, status=answer.status, answer=said)
        if answer.status == 401:
            what = "API key" if isinstance(self.auth, ApiKeyAuth) else "OAuth2 token"
            return PermanentError(
                f"the Connector rejected the {what} ({self.auth.description}): {message}",
                code=code or "error.connector.unauthorized",
                status=answer.status,
                answer=said,
            )
        return PermanentError(message, code=code or str(answer.status), status=answer.status, answer=said)

    def _scrub(self, text: str) -> str:
        return self.client.scrub(text)

    def _scrub_json(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, Mapping):
            return {self._scrub(str(k)): self._scrub_json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._scrub_json(v) for v in value]
        return value

    # --- results as events ----------------------------------------------------------------------------

    async def _emit(self, delivery: Delivery, run: _Run, error: DeliveryError | None) -> None:
        if not self.emit_results:
            return
        cause = delivery.event
        depth = int(cause.meta.get("chain_depth", 0)) if cause.trigger in (SUCCEEDED, FAILED) else 0
        if depth >= MAX_CHAIN_DEPTH:
            self.log.warning(
                "action result not emitted: chain too deep",
                extra={"route": delivery.route, "event_id": cause.id, "depth": depth},
            )
            return
        submit: SubmitEvents | None = self.submit or getattr(self.context, "submit", None)
        if submit is None:
            if not self._warned_no_submit:
                self._warned_no_submit = True
                self.log.error(
                    "emit_results is on, but this router gives outputs no way to submit events; results are dropped",
                    extra={"output": self.name},
                )
            return
        meta: dict[str, Any] = {"caused_by": cause.id, "chain_depth": depth + 1}
        if delivery.traceparent is not None:  # telemetry on: the result's trace goes on from this attempt
            meta["traceparent"] = delivery.traceparent
        result = Event(
            trigger=FAILED if error is not None else SUCCEEDED,
            data=self._result_data(delivery, run, error),
            source=RESULT_SOURCE,
            meta=meta,
        )
        # the action has happened: wait for room in the spool rather than fail (a retry would repeat it)
        while True:
            try:
                await submit([result])
                return
            except SpoolFull as exc:
                await anyio.sleep(exc.retry_after)

    def _result_data(self, delivery: Delivery, run: _Run, error: DeliveryError | None) -> dict[str, Any]:
        steps = [
            {
                "request": {"method": a.call.method, "path": self.prefix + a.call.path},
                "status": a.status,
                # result events are stored and routed on: an answer quoting our credentials must not be
                "response": self._scrub_json(a.body),
            }
            for a in run.answers
        ]
        last: dict[str, Any] = steps[-1] if steps else {"request": None, "status": None, "response": None}
        data: dict[str, Any] = {
            "action": run.name,
            "route": delivery.route,
            "output": self.name,
            **last,
            "event": {"id": delivery.event.id, "trigger": delivery.event.trigger},
        }
        if len(steps) > 1:
            data["steps"] = steps
        if error is not None:
            data["error"] = {"code": error.code, "message": str(error)}
        return data


def _headers(delivery: Delivery) -> dict[str, str]:
    """The headers of a call for `delivery`: the event id as the correlation id (the events the call causes
    carry it back), and with telemetry on the attempt's trace context."""
    headers = {"x-correlation-id": delivery.event.id}
    if delivery.traceparent is not None:
        headers["traceparent"] = delivery.traceparent
        if delivery.tracestate is not None:
            headers["tracestate"] = delivery.tracestate
    return headers


def _json(raw: bytes, *, cut: bool = False) -> Any:
    """An answer's body parsed; `{"text": ...}` (its start) when it is not JSON, or was cut at MAX_ANSWER."""
    if not raw:
        return None
    if not cut:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    text: dict[str, Any] = {"text": raw[:_TEXT_KEPT].decode("utf-8", "replace")}
    if cut:
        text["cut_at_bytes"] = MAX_ANSWER
    return text


@hookimpl
def event_router_output_types() -> list[type[Output]]:
    return [ConnectorOutput]
