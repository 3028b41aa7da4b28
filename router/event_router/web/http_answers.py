"""What the router reads of an HTTP answer it gets as a client (http and connector outputs, OAuth2 token
requests), how it parses `Retry-After`, and which statuses it tries again after (`StatusPolicy`).

A receiver is not trusted to answer sensibly: a body of any size (or one that never ends) costs at most
`limit` bytes of memory, and whatever comes after them is never read: the connection is closed instead.
Answers are not decompressed (no `Accept-Encoding` is sent, and a compressed answer stays compressed), so a
small compressed body cannot unfold into a large one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from time import time
from typing import Any, Final

import aiohttp

from event_router.api.errors import ConfigError

__all__ = [
    "CLIENT_SESSION_OPTIONS",
    "STATUS_POLICY_PROPERTIES",
    "StatusPolicy",
    "discard_answer",
    "read_answer",
    "retry_after_seconds",
]

#: keyword arguments for every `aiohttp.ClientSession` that talks to a receiver
CLIENT_SESSION_OPTIONS: Final[dict[str, Any]] = {
    "auto_decompress": False,
    "skip_auto_headers": ("Accept-Encoding",),
}


async def read_answer(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the answer's body, and whether there was more. When there was (or may have
    been) more, the connection is closed rather than read to its end."""
    chunks: list[bytes] = []
    size = 0
    content = response.content
    while size < limit:
        chunk = await content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    more = not content.at_eof()
    if more:
        response.close()
    return b"".join(chunks), more


async def discard_answer(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """Done with an answer whose body does not matter (a 2xx, a redirect). A small body announced by its
    Content-Length is read, so the connection can serve the next request, and returned (for the attempt's
    record); any other is not waited for: the connection is closed, and None returned. A failure while
    reading is no failure of the request."""
    length = response.content_length
    if length is None or length > limit:
        response.close()
        return None
    try:
        raw, _ = await read_answer(response, limit)
    except (aiohttp.ClientError, OSError):
        response.close()
        return None
    return raw


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds, from either of its forms (delta-seconds or an HTTP date); None when absent or
    unusable. Never infinite nor NaN (`inf`, `1e400`, `nan` are ignored); the retry policy bounds the rest
    (a date far in the future) by `max_backoff` and `max_age`."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time()
        except (TypeError, ValueError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


#: statuses below 500 worth trying again by default: the receiver says "later"
RETRYABLE_STATUS: Final = frozenset({408, 425, 429})
#: the classes `retry_on` and `permanent_on` may name, by their first digit
STATUS_CLASSES: Final = {"4xx": 4, "5xx": 5}

#: `retry_on`, `permanent_on`: error statuses (400 to 599), or classes of them
STATUS_LIST_SCHEMA: Final[dict[str, Any]] = {
    "type": "array",
    "items": {
        "anyOf": [{"type": "integer", "minimum": 400, "maximum": 599}, {"enum": list(STATUS_CLASSES)}],
        "x-error": 'is not an HTTP error status: give one from 400 to 599, or "4xx" or "5xx" for a whole class',
    },
}
#: the keys of an output that speaks HTTP for which answers are retried: add them to its `config_schema`'s
#: `properties` and build its `StatusPolicy.from_config`
STATUS_POLICY_PROPERTIES: Final[dict[str, Any]] = {
    "retry_on": {**STATUS_LIST_SCHEMA, "description": "statuses retried besides 408, 425, 429, 5xx"},
    "permanent_on": {**STATUS_LIST_SCHEMA, "description": "statuses dead-lettered at once, none retried"},
}


@dataclass(frozen=True, slots=True)
class StatusPolicy:
    """Which non-2xx answers a delivery is tried again after, for every output that speaks HTTP (http,
    connector): by default 408, 425, 429 and every 5xx (the receiver may recover), no other status (the same
    request would fail the same way). `retry_on` and `permanent_on` move statuses, or whole classes
    ("4xx", "5xx"), to either side: a receiver that answers 404 while it is redeployed is retried with
    `retry_on = [404]`. An exact status wins over a class (`retry_on = ["5xx"], permanent_on = [501]`);
    the same status, or the same class, in both lists is refused."""

    retry: frozenset[int] = frozenset()
    permanent: frozenset[int] = frozenset()
    #: classes by their first digit (5 for "5xx")
    retry_classes: frozenset[int] = frozenset()
    permanent_classes: frozenset[int] = frozenset()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StatusPolicy:
        """From an output's table (checked against `STATUS_POLICY_PROPERTIES`); `ConfigError` for a status or
        a class in both lists."""
        retry_on: list[int | str] = list(config.get("retry_on", ()))
        permanent_on: list[int | str] = list(config.get("permanent_on", ()))
        for index, entry in enumerate(permanent_on):
            if entry in retry_on:
                shown = f'"{entry}"' if isinstance(entry, str) else str(entry)
                raise ConfigError(
                    f"permanent_on[{index}]",
                    f"{shown} is in retry_on too: name it in one list (an exact status wins over a class, "
                    'so retry_on = ["5xx"] with permanent_on = [501] is fine)',
                )
        return cls(
            retry=frozenset(e for e in retry_on if isinstance(e, int)),
            permanent=frozenset(e for e in permanent_on if isinstance(e, int)),
            retry_classes=frozenset(STATUS_CLASSES[e] for e in retry_on if isinstance(e, str)),
            permanent_classes=frozenset(STATUS_CLASSES[e] for e in permanent_on if isinstance(e, str)),
        )

    def retryable(self, status: int) -> bool:
        """Whether a delivery answered `status` (not a 2xx) is worth sending again."""
        if status in self.retry:
            return True
        if status in self.permanent:
            return False
        if status // 100 in self.retry_classes:
            return True
        if status // 100 in self.permanent_classes:
            return False
        return status in RETRYABLE_STATUS or status >= 500
