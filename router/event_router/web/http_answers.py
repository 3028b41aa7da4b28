"""What the router reads of an HTTP answer it gets as a client (http and connector outputs, OAuth2 token
requests), and how it parses `Retry-After`.

A receiver is not trusted to answer sensibly: a body of any size (or one that never ends) costs at most
`limit` bytes of memory, and whatever comes after them is never read: the connection is closed instead.
Answers are not decompressed (no `Accept-Encoding` is sent, and a compressed answer stays compressed), so a
small compressed body cannot unfold into a large one.
"""

from __future__ import annotations

import math
from email.utils import parsedate_to_datetime
from time import time
from typing import Any, Final

import aiohttp

__all__ = ["CLIENT_SESSION_OPTIONS", "discard_answer", "read_answer", "retry_after_seconds"]

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


async def discard_answer(response: aiohttp.ClientResponse, limit: int) -> None:
    """Done with an answer whose body does not matter (a 2xx, a redirect). A small body announced by its
    Content-Length is read, so the connection can serve the next request; any other is not waited for:
    the connection is closed. A failure while reading is no failure of the request."""
    length = response.content_length
    if length is None or length > limit:
        response.close()
        return
    try:
        await read_answer(response, limit)
    except (aiohttp.ClientError, OSError):
        response.close()


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


#: statuses below 500 worth trying again: the receiver may recover
RETRYABLE_STATUS = frozenset({408, 425, 429})


def retryable_status(status: int) -> bool:
    """Whether an HTTP answer with `status` is worth sending again (a 5xx, or a 4xx that says "later")."""
    return status in RETRYABLE_STATUS or status >= 500
