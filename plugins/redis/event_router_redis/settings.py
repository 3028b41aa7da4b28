"""The `[inputs.NAME]` table of a Redis input, checked and with its defaults applied. No I/O."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from event_router.api import DURATION_SCHEMA, ConfigError, parse_duration, secret_schema

#: the channels the Connector publishes to are its namespaces; `*` in a Redis pattern also matches dots
DEFAULT_PATTERNS = ("transport.*", "consumption.*", "runtime.*")
PUBSUB_KEYS = ("patterns",)
STREAM_KEYS = ("stream", "group", "consumer", "create_group", "block", "claim_idle", "max_deliveries")

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        # a password may be in it; the stand-in when the reference is not resolved (`event-router status`...)
        "url": secret_schema("redis://127.0.0.1:6379/0", url=True),
        "mode": {"enum": ["pubsub", "stream"]},
        "patterns": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        "stream": {"type": "string", "minLength": 1},
        "group": {"type": "string", "minLength": 1},
        "consumer": {"type": "string", "minLength": 1},
        "create_group": {"type": "boolean"},
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 10000},
        "block": DURATION_SCHEMA,
        "claim_idle": DURATION_SCHEMA,
        "max_deliveries": {"type": "integer", "minimum": 1},
        "reconnect_max": DURATION_SCHEMA,
    },
}


@dataclass(frozen=True, slots=True)
class Settings:
    """A Redis input's table with every default applied; durations in seconds."""

    url: str
    #: `url` without its password, for logs
    display: str
    mode: Literal["pubsub", "stream"]
    patterns: tuple[str, ...]
    stream: str
    group: str
    consumer: str
    create_group: bool
    batch_size: int
    block: float
    claim_idle: float
    max_deliveries: int
    reconnect_max: float


def parse_settings(config: Mapping[str, Any], input_name: str) -> Settings:
    """The settings of input `input_name`; raises `ConfigError` naming the wrong key."""
    url = str(config["url"])
    display = redacted(url)
    mode = config.get("mode", "pubsub")
    foreign = STREAM_KEYS if mode == "pubsub" else PUBSUB_KEYS
    for key in foreign:
        if key in config:
            raise ConfigError(key, f'only used when mode = "{"stream" if mode == "pubsub" else "pubsub"}"')
    if mode == "stream" and "stream" not in config:
        raise ConfigError("stream", 'required when mode = "stream": the key of the stream to read')
    block = _duration(config, "block", "1s")
    if block < 0.001:
        raise ConfigError("block", "must be at least 1ms (0 would make Redis wait forever)")
    claim_idle = _duration(config, "claim_idle", "60s")
    if claim_idle < 0.001:
        raise ConfigError("claim_idle", "must be at least 1ms")
    reconnect_max = _duration(config, "reconnect_max", "30s")
    if reconnect_max <= 0:
        raise ConfigError("reconnect_max", "must be more than 0")
    return Settings(
        url=url,
        display=display,
        mode=mode,
        patterns=tuple(config.get("patterns", DEFAULT_PATTERNS)),
        stream=config.get("stream", ""),
        group=config.get("group", "event-router"),
        consumer=config.get("consumer", f"{input_name}-{socket.gethostname()}-{os.getpid()}"),
        create_group=config.get("create_group", True),
        batch_size=config.get("batch_size", 500),
        block=block,
        claim_idle=claim_idle,
        max_deliveries=config.get("max_deliveries", 5),
        reconnect_max=reconnect_max,
    )


def redacted(url: str) -> str:
    """`url` without its password: `redis://user@host:6379/0`. Errors never repeat the URL (it is a secret)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError("url", f"not a valid URL ({exc})") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("url", "must start with redis://, rediss:// or unix:// (e.g. redis://127.0.0.1:6379/0)")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError("url", "has no host (e.g. redis://127.0.0.1:6379/0)")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    user = f"{parts.username}@" if parts.username else ""
    netloc = f"{user}{host}" + (f":{port}" if port else "")
    # the query may carry a password too (`?password=`): leave it out
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _duration(config: Mapping[str, Any], key: str, default: str) -> float:
    try:
        return parse_duration(config.get(key, default))
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None
