"""The `[inputs.NAME]` table of an MQTT input, checked and turned into what the client needs. No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from event_router.api import DURATION_SCHEMA, ConfigError, parse_duration, secret_schema

#: where the Connector publishes: its namespaces with `.` replaced by `/`, no prefix
DEFAULT_TOPICS = ("transport/#", "consumption/#", "runtime/#")
#: scheme -> (TLS, default port); `tcp`/`ssl`/`tls` are the aliases mqtt.js (the Connector's client) accepts
_SCHEMES = {
    "mqtt": (False, 1883),
    "tcp": (False, 1883),
    "mqtts": (True, 8883),
    "ssl": (True, 8883),
    "tls": (True, 8883),
}

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        # a password may be in it; the stand-in when the reference is not resolved (`event-router status`...)
        "url": secret_schema("mqtt://127.0.0.1:1883", url=True),
        "topics": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        # QoS 2 is refused: paho answers PUBREC before the application sees the message, which hands the
        # message over before it is stored.
        "qos": {"enum": [0, 1]},
        "client_id": {"type": "string", "minLength": 1, "maxLength": 65535},
        "clean_session": {"type": "boolean"},
        "topic_prefix": {"type": "string"},
        "reconnect_max": DURATION_SCHEMA,
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 10000},
    },
}


@dataclass(frozen=True, slots=True)
class Broker:
    """Where to connect, from `url`. `display` is safe to log: it never holds the password."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None
    display: str


@dataclass(frozen=True, slots=True)
class Settings:
    """An MQTT input's table with every default applied."""

    broker: Broker
    topics: tuple[str, ...]
    qos: int
    client_id: str
    clean_session: bool
    #: without its trailing `/`; "" for none
    topic_prefix: str
    reconnect_max: float
    batch_size: int


def parse_settings(config: Mapping[str, Any], input_name: str) -> Settings:
    """The settings of input `input_name`; raises `ConfigError` naming the wrong key."""
    prefix = config.get("topic_prefix", "").strip("/")
    if "+" in prefix or "#" in prefix:
        raise ConfigError("topic_prefix", f"{prefix!r}: wildcards are not allowed in a prefix (it is stripped as text)")
    default_topics = [f"{prefix}/{t}" if prefix else t for t in DEFAULT_TOPICS]
    topics = tuple(config.get("topics", default_topics))
    for index, topic in enumerate(topics):
        problem = topic_filter_problem(topic)
        if problem:
            raise ConfigError(f"topics[{index}]", f"{topic!r} is not an MQTT topic filter: {problem}")
    try:
        reconnect_max = parse_duration(config.get("reconnect_max", "30s"))
    except ValueError as exc:
        raise ConfigError("reconnect_max", str(exc)) from None
    if reconnect_max <= 0:
        raise ConfigError("reconnect_max", "must be more than 0")
    return Settings(
        broker=parse_url(str(config["url"])),
        topics=topics,
        qos=config.get("qos", 1),
        client_id=config.get("client_id", f"event-router-{input_name}"),
        clean_session=config.get("clean_session", False),
        topic_prefix=prefix,
        reconnect_max=reconnect_max,
        batch_size=config.get("batch_size", 100),
    )


def parse_url(url: str) -> Broker:
    """`mqtt://[user[:password]@]host[:port]` (or `mqtts://`); errors never repeat the URL (it is a secret)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError("url", f"not a valid URL ({exc})") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError("url", "must start with mqtt:// or mqtts:// (e.g. mqtt://127.0.0.1:1883)")
    if not parts.hostname:
        raise ConfigError("url", "has no host (e.g. mqtt://127.0.0.1:1883)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError("url", "must not have a path, query or fragment (MQTT over WebSocket is not supported)")
    tls, default_port = _SCHEMES[parts.scheme]
    host = parts.hostname
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    shown_host = f"[{host}]" if ":" in host else host
    user = f"{username}@" if username else ""
    return Broker(
        host=host,
        port=port or default_port,
        tls=tls,
        username=username,
        password=password,
        display=f"{'mqtts' if tls else 'mqtt'}://{user}{shown_host}:{port or default_port}",
    )


def topic_filter_problem(topic: str) -> str | None:
    """Why `topic` is not a valid subscription filter (MQTT 3.1.1 section 4.7), or None when it is."""
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "'#' must be a whole level and the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    if "\0" in topic:
        return "contains a NUL character"
    return None


def trigger_for(topic: str, prefix: str) -> str:
    """The Connector namespace a topic stands for; raises ValueError when it stands for none."""
    if prefix:
        if not topic.startswith(prefix + "/"):
            raise ValueError(f"topic {topic!r} does not start with topic_prefix {prefix + '/'!r}")
        topic = topic[len(prefix) + 1 :]
    levels = topic.split("/")
    if any(not level for level in levels):
        raise ValueError(f"topic {topic!r} has an empty level: it names no Connector event")
    return ".".join(levels)
