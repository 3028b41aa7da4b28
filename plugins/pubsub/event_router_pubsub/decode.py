"""From a pulled Pub/Sub message to an `Event`, or to a `Rejected` saying why it cannot be one.

The Connector's PubSub broker publishes, per event, the compact JSON of the event's data (`{}` for
events without data) with exactly one attribute, `namespace`, and no ordering key. Pure: no I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from event_router.api import Event, Rejected, decode_event

# only for annotations: gcloud-aio-pubsub is imported by a running input (see input.py)
if TYPE_CHECKING:
    from gcloud.aio.pubsub import SubscriberMessage

NAMESPACE_ATTRIBUTE = "namespace"


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


def decode(message: SubscriberMessage, *, source: str, subscription: str) -> Event | Rejected:
    """The event the Connector published, or why this message is not one."""
    meta = message_meta(message, subscription)
    raw = message.data or b""
    attributes = message.attributes or {}
    problem = _namespace_problem(attributes)
    trigger = None if problem is not None else attributes[NAMESPACE_ATTRIBUTE]
    # Pub/Sub allows attribute-only messages (the Connector itself sends `{}` for events without data):
    # such an event keeps no bytes
    return decode_event(trigger, raw, source=source, meta=meta, refuse=problem, what="message data", keep=raw or None)


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
