"""From a pulled Pub/Sub message to an `Event`, or to the reason it cannot be one.

The Connector's PubSub broker publishes, per event, the compact JSON of the event's data (`{}` for
events without data) with exactly one attribute, `namespace`, and no ordering key. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from event_router.api import Event

# only for annotations: gcloud-aio-pubsub is imported by a running input (see input.py)
if TYPE_CHECKING:
    from gcloud.aio.pubsub import SubscriberMessage

NAMESPACE_ATTRIBUTE = "namespace"


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A message that cannot become an event: kept as a dead letter with `reason`, then acknowledged."""

    raw: bytes
    reason: str
    trigger: str | None
    meta: dict[str, Any]


def message_meta(message: SubscriberMessage, subscription: str) -> dict[str, Any]:
    """Transport details kept in `Event.meta` (and in a dead letter's meta)."""
    meta: dict[str, Any] = {
        "message_id": _storable(message.message_id),
        "publish_time": _rfc3339(message.publish_time),
        "attributes": {_storable(k): _storable(v) for k, v in (message.attributes or {}).items()},
        "subscription": subscription,
    }
    if message.delivery_attempt is not None:
        # only set when the subscription has a dead-letter policy
        meta["delivery_attempt"] = _storable(message.delivery_attempt)
    return meta


def decode(message: SubscriberMessage, *, source: str, subscription: str) -> Event | Undecodable:
    """The event the Connector published, or why this message is not one."""
    meta = message_meta(message, subscription)
    raw = message.data or b""
    attributes = message.attributes or {}
    problem = _namespace_problem(attributes)
    if problem is not None:
        return Undecodable(raw, problem, None, meta)
    trigger: str = attributes[NAMESPACE_ATTRIBUTE]
    if not raw:
        # Pub/Sub allows attribute-only messages; the Connector itself sends `{}` for events without data
        return Event(trigger=trigger, data=None, source=source, meta=meta)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Undecodable(raw, f"message data is not valid JSON: {exc}", trigger, meta)
    # raw: kept until stored, so an event too deep to store as JSON is dead-lettered with its bytes
    return Event(trigger=trigger, data=data, source=source, meta=meta, raw=raw)


def _namespace_problem(attributes: dict[str, Any]) -> str | None:
    """Why the namespace attribute names no Connector event, or None when it does."""
    if NAMESPACE_ATTRIBUTE not in attributes:
        return "no namespace attribute"
    value = attributes[NAMESPACE_ATTRIBUTE]
    if not isinstance(value, str):
        return f"namespace attribute is not text: {repr(value)[:80]}"
    if not value:
        return "namespace attribute is empty"
    if _storable(value) != value:
        return f"namespace attribute is not valid Unicode (a lone surrogate): {_storable(value)!r}"
    return None


def _storable(value: Any) -> Any:
    """`value` as the spool can store it in JSON.

    JSON, and so the REST API's answer, can escape lone surrogates (`\\ud800`), which UTF-8 cannot encode:
    they are kept as that escape. Anything else orjson cannot write (nested too deeply) is kept as its text.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode()
    try:
        orjson.dumps(value)
    except TypeError:
        return _storable(repr(value))
    return value


def _rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with `Z`, the form the Connector and the router use for dates."""
    spec = "milliseconds" if moment.microsecond % 1000 == 0 else "microseconds"
    return moment.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")
