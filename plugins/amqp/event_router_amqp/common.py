"""What the AMQP input and output share: URL checks, error wording, header cleaning.

`redact_url` is the core's (`event_router.api`).
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from event_router.api import ConfigError, redact_url

#: what stands in for `url` (a secret: it holds the password) when the reference is not resolved
PLACEHOLDER_URL = "amqp://unresolved:unresolved@127.0.0.1:5672/"
#: JSON Schema fragment of the exchange types RabbitMQ ships
EXCHANGE_TYPES = ["topic", "direct", "fanout", "headers"]


def check_url(url: str) -> str:
    """The URL as given, or `ConfigError("url")` when it is not amqp(s)://...; never echoes the password."""
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ConfigError("url", f"{redact_url(url)!r} is not an AMQP URL (amqp://user:password@host:5672/vhost)")
    return url


def describe_error(exc: BaseException) -> str:
    """One readable line for an AMQP failure (aiormq's str() of some errors is a bare tuple)."""
    # loaded already: only a connection that ran has failures to describe (this module stays light, see input.py)
    from aiormq.exceptions import AMQPError

    if isinstance(exc, AMQPError):
        args = exc.args
        if len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], str):
            return f"{args[1]} (AMQP {args[0]})"  # (reply code, reply text) of a Close frame
        if len(args) == 1 and isinstance(args[0], str):
            return args[0]  # the broker's reply text, which names the code ("NOT_FOUND - no exchange ...")
        return repr(exc).strip("<>")
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: field tables and arrays nested deeper than this are kept as their text: orjson writes no more than 254
#: levels, and the event or dead letter around a header takes a few (pamqp reads about 500)
MAX_HEADER_DEPTH = 64


def wire_text(name: str) -> str:
    """A name pamqp decoded, as JSON can hold it: bytes that were not UTF-8 as `\\xNN` text.

    `tolerant_decode` turns such bytes into lone surrogates, which orjson refuses; written as `\\xNN`,
    like the core keeps a body that is not UTF-8, they stay readable. Valid text is returned as it is.
    """
    if name.isascii():
        return name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate no decoder makes: only its code point can be shown
            return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return name


def json_safe(value: Any, depth: int = 0) -> Any:
    """AMQP field-table values as JSON: bytes as text, decimals as numbers, timestamps as RFC 3339.

    Keys (and text) that were not UTF-8 on the wire are written as `wire_text` writes them.
    """
    if isinstance(value, str):
        return wire_text(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, Mapping | list | tuple | set | frozenset) and depth >= MAX_HEADER_DEPTH:
        return repr(value)
    if isinstance(value, Mapping):
        return {wire_text(str(k)): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, depth + 1) for v in value]
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat().replace("+00:00", "Z")
    return str(value)
