"""For input plugins: one message of the Connector's broker publisher -> an `Event`, or a `Rejected` that
says why it cannot be one.

Every broker the Connector publishes to gets the same body: the compact JSON of the event's data (`{}` for
events without data), no envelope; only where the namespace travels differs (routing key, topic, channel,
attribute). An input works out the namespace (the trigger) from its transport, or why there is none, and
hands both to `decode_event`, which parses the payload the same way for every input.
"""

from __future__ import annotations

from typing import Any

import orjson

from event_router.api.batching import Rejected
from event_router.api.event import Event

#: `keep`'s default: the payload itself
_PAYLOAD: Any = object()

#: the bytes JSON counts as whitespace (RFC 8259): a payload of only these holds no JSON value, like an empty
#: one, and is taken as one (`bytes.strip` would take \x0b and \x0c too, which JSON does not)
JSON_WHITESPACE = b" \t\n\r"
#: each of them alone, and the empty payload's first byte (b"")
_WHITESPACE_BYTES = frozenset({b"", *(bytes([c]) for c in JSON_WHITESPACE)})


def is_blank(payload: bytes) -> bool:
    """True for an empty payload, or one of JSON whitespace only: no JSON value in it, so no data.
    O(1) for a payload that starts with anything else (every JSON value does): `strip` alone copies the rest."""
    if payload[:1] not in _WHITESPACE_BYTES:
        return False
    return not payload.strip(JSON_WHITESPACE)


def decode_event(
    trigger: str | None,
    payload: bytes,
    *,
    source: str,
    meta: dict[str, Any],
    refuse: str | None = None,
    what: str = "payload",
    keep: bytes | None = _PAYLOAD,
) -> Event | Rejected:
    """The event `payload` (JSON of the event's data) stands for under `trigger`, or why it stands for none.

    - `trigger`: the Connector namespace the message names; with `refuse`, the trigger the dead letter is
      filed under (None: none).
    - `refuse`: why the message cannot become an event whatever its payload (no namespace, delivered too
      often...); checked first. A missing `trigger` without a reason is refused as naming no event.
    - `meta`: transport details kept in `Event.meta`, or in the dead letter's meta.
    - `what`: how the reason names the payload (`"body is not valid JSON: ..."`).
    - `keep`: the bytes the event keeps until it is stored (dead-lettered with them if its data nests
      deeper than JSON can be written) and a dead letter keeps; default `payload`. None: the event keeps
      none (the dead letter keeps `payload`).

    An empty payload, or one of whitespace only (`is_blank`), is an event without data (`data` None); a
    trigger that is not valid Unicode (a lone surrogate) is refused and dropped.
    Pure: no I/O, nothing raised for any bytes.
    """
    kept = payload if keep is _PAYLOAD else keep
    if trigger and any("\ud800" <= c <= "\udfff" for c in trigger):
        # a lone surrogate (from a lenient decoder) names no event, and neither JSON nor the spool holds it
        refuse = refuse or f"the event type {trigger!r} is not valid Unicode"
        trigger = None
    if refuse is None and not trigger:
        refuse = "the message names no event type"
    if refuse is not None:
        return Rejected(payload if kept is None else kept, refuse, trigger or None, meta)
    assert trigger  # refused above otherwise
    data: Any = None
    if not is_blank(payload):
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            return Rejected(payload if kept is None else kept, f"{what} is not valid JSON: {exc}", trigger, meta)
    return Event(trigger=trigger, data=data, source=source, meta=meta, raw=kept)
