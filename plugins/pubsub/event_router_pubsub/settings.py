"""The `[inputs.NAME]` table of `type = "pubsub"`: its JSON Schema and its parsed, checked form.

Pure: no I/O, so `event-router check` can construct the input anywhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from event_router.api import DURATION_SCHEMA, ConfigError, parse_duration

#: the environment variable Google's client libraries (and gcloud-aio) read for the emulator
EMULATOR_ENV = "PUBSUB_EMULATOR_HOST"
#: Pub/Sub accepts 0..600 s in modifyAckDeadline; below 10 s it refuses a subscription's deadline
MIN_ACK_DEADLINE, MAX_ACK_DEADLINE = 10.0, 600.0
#: Pub/Sub returns at most 1000 messages per pull
MAX_PULL = 1000

# Pub/Sub's rule for topic and subscription ids: 3-255 characters, a letter first (the emulator enforces
# the length too: "Invalid [topics] name" for "t1").
_RESOURCE_ID = re.compile(r"[A-Za-z][-A-Za-z0-9._~+%]{2,254}")
_PROJECT_ID = re.compile(r"[a-z0-9][-a-z0-9.:]*")
_HOST_PORT = re.compile(r"(\[[0-9a-fA-F:.]+\]|[^:/\[\]\s]+):\d{1,5}")

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["project", "subscription"],
    "properties": {
        "project": {"type": "string", "minLength": 1, "description": "the Google Cloud project id"},
        "subscription": {
            "type": "string",
            "minLength": 1,
            "description": "subscription id, or projects/P/subscriptions/S",
        },
        "topic": {"type": "string", "minLength": 1, "description": "topic id or projects/P/topics/T"},
        "create_subscription": {"type": "boolean", "description": "create the subscription on `topic` if missing"},
        "key_file": {"type": "string", "minLength": 1, "description": "service-account JSON key"},
        "emulator_host": {"type": "string", "minLength": 1, "description": "host:port of a Pub/Sub emulator"},
        "max_messages": {"type": "integer", "minimum": 1, "maximum": MAX_PULL},
        "ack_deadline": DURATION_SCHEMA,
        "reconnect_max": DURATION_SCHEMA,
    },
}


@dataclass(frozen=True, slots=True)
class PubSubSettings:
    """A checked `type = "pubsub"` table: full resource paths, durations in seconds, paths resolved."""

    project: str
    #: projects/P/subscriptions/S
    subscription: str
    #: projects/P/topics/T, or None
    topic: str | None
    create_subscription: bool
    key_file: Path | None
    #: host:port of the emulator (from the table, else $PUBSUB_EMULATOR_HOST), or None for Google's service
    emulator_host: str | None
    max_messages: int
    ack_deadline: float
    reconnect_max: float

    @property
    def api_root(self) -> str | None:
        """The REST root to call; None lets the client use pubsub.googleapis.com."""
        return f"http://{self.emulator_host}/v1" if self.emulator_host else None

    @property
    def endpoint(self) -> str:
        """Where this input pulls from, for logs."""
        return f"emulator {self.emulator_host}" if self.emulator_host else "pubsub.googleapis.com"


def parse_settings(
    config: Mapping[str, Any], config_dir: Path, environ: Mapping[str, str] = os.environ
) -> PubSubSettings:
    """Check what the JSON Schema cannot; raise `ConfigError` naming the key."""
    project = config["project"]
    if not _PROJECT_ID.fullmatch(project):
        raise ConfigError("project", f"{project!r} is not a project id (lowercase letters, digits, hyphens)")
    subscription = _resource_path("subscription", config["subscription"], project, "subscriptions")
    topic = _resource_path("topic", config["topic"], project, "topics") if "topic" in config else None
    create = bool(config.get("create_subscription", False))
    if create and topic is None:
        raise ConfigError("create_subscription", "needs `topic`: the topic the subscription is created on")
    emulator = config.get("emulator_host") or environ.get(EMULATOR_ENV) or None
    if emulator is not None and not _HOST_PORT.fullmatch(emulator):
        origin = "" if "emulator_host" in config else f" (from ${EMULATOR_ENV})"
        raise ConfigError("emulator_host", f"{emulator!r}{origin} is not host:port (e.g. 127.0.0.1:8085)")
    ack_deadline = parse_duration(config.get("ack_deadline", "60s"))
    if not MIN_ACK_DEADLINE <= ack_deadline <= MAX_ACK_DEADLINE:
        raise ConfigError(
            "ack_deadline", f"{ack_deadline:g}s is outside what Pub/Sub accepts ({MIN_ACK_DEADLINE:g}s to 10m)"
        )
    reconnect_max = parse_duration(config.get("reconnect_max", "30s"))
    if reconnect_max <= 0:
        raise ConfigError("reconnect_max", "must be more than 0")
    key_file = config_dir / config["key_file"] if "key_file" in config else None
    return PubSubSettings(
        project=project,
        subscription=subscription,
        topic=topic,
        create_subscription=create,
        key_file=key_file,
        emulator_host=emulator,
        max_messages=config.get("max_messages", 500),
        ack_deadline=ack_deadline,
        reconnect_max=reconnect_max,
    )


def _resource_path(key: str, value: str, project: str, collection: str) -> str:
    """`projects/P/<collection>/<id>` from an id or a full path; ConfigError explaining the rule otherwise."""
    if value.startswith("projects/"):
        parts = value.split("/")
        if len(parts) != 4 or parts[2] != collection or not _PROJECT_ID.fullmatch(parts[1]):
            raise ConfigError(key, f"{value!r} is not projects/<project>/{collection}/<id>")
        resource_id = parts[3]
    else:
        resource_id = value
        value = f"projects/{project}/{collection}/{value}"
    if not _RESOURCE_ID.fullmatch(resource_id) or resource_id.lower().startswith("goog"):
        raise ConfigError(
            key,
            f"{resource_id!r} is not a Pub/Sub id: 3 to 255 characters, a letter first, then letters, digits "
            "or - . _ ~ + %, not starting with 'goog'",
        )
    return value
