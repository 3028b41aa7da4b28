"""CloudEvents 1.0 over HTTP (https://github.com/cloudevents/spec), structured and binary content mode.

Attributes: `specversion` "1.0", `id` = the event id (stable across retries, so receivers can drop
duplicates), `source` = `event-router/<input>`, `type` = the Connector trigger, `time` = when the router
received the event, `datacontenttype` = `application/json`; `data` = the Connector's data (or a route's
reshaped payload). An event without data (e.g. `runtime.modulesStarted` from the webhook) has no `data`.

Written here rather than with the `cloudevents` package: the router needs two small functions over JSON it
already serialises with orjson, and the package would add a dependency (and its own JSON encoding) for that.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from event_router.api import Event

__all__ = ["SPECVERSION", "STRUCTURED_CONTENT_TYPE", "attributes", "binary", "structured"]

SPECVERSION: Final = "1.0"
STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
_DATA_CONTENT_TYPE: Final = "application/json"


def attributes(event: Event) -> dict[str, str]:
    """The context attributes of `event` (no data)."""
    return {
        "specversion": SPECVERSION,
        "id": event.id,
        "source": f"event-router/{event.source}",
        "type": event.trigger,
        "time": event.received_at,
        "datacontenttype": _DATA_CONTENT_TYPE,
    }


def structured(event: Event, data: Any) -> tuple[dict[str, str], bytes]:
    """Headers and body in structured mode: one JSON object with the attributes and `data`."""
    body: dict[str, Any] = attributes(event)
    if data is not None:
        body["data"] = data
    return {"Content-Type": STRUCTURED_CONTENT_TYPE}, orjson.dumps(body)


def binary(event: Event, data: Any) -> tuple[dict[str, str], bytes]:
    """Headers and body in binary mode: attributes as `ce-*` headers, the body is the data itself."""
    attrs = attributes(event)
    content_type = attrs.pop("datacontenttype")
    headers = {f"ce-{name}": _header_value(value) for name, value in attrs.items()}
    if data is None:
        return headers, b""
    headers["Content-Type"] = content_type
    return headers, orjson.dumps(data)


def _header_value(value: str) -> str:
    # HTTP binding 3.1.3.2: space, '"', '%' and anything outside printable ASCII are percent-encoded (UTF-8)
    out = []
    for char in value:
        if "!" <= char <= "~" and char not in '"%':
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode())
    return "".join(out)
