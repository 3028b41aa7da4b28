"""The schema of router.toml's own tables (`[router]`, the core's keys of `[inputs.*]`/`[outputs.*]`,
`[[routes]]`) and the keys the core reads in each. A plugin's own keys are checked against the schema the
plugin ships (`Input.config_schema`, `Output.config_schema`), not here."""

from __future__ import annotations

from typing import Any

from event_router.api.durations import DURATION_SCHEMA
from event_router.api.ratelimit import RATE_LIMIT_SCHEMA
from event_router.api.retry import RETRY_SCHEMA
from event_router.api.secrets import CREDENTIAL_HEADER_PATTERN, SECRET_SCHEMA, TEXT_OR_SECRET_SCHEMA

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*$"
INPUT_CORE_KEYS = ("type", "validation", "unknown_triggers")
OUTPUT_CORE_KEYS = ("type", "concurrency", "retry", "timeout", "max_pending", "rate_limit", "breaker", "ordering_key")
#: route keys the core reads; the others (`action`) are passed to outputs, which check them
#: through `Output.check_route_options`
ROUTE_KEYS = ("name", "match", "to", "stop", "reshape", "retry", "ordering_key")

#: an output's `breaker`: `true` (the defaults), `false` (none, the default), or a table
BREAKER_SCHEMA: dict[str, Any] = {
    "type": ["boolean", "object"],
    # applied to a table only
    "additionalProperties": False,
    "properties": {"failures": {"type": "integer", "minimum": 1}, "cool_down": DURATION_SCHEMA},
}

#: `[router.telemetry]` (event_router.core.telemetry): its presence turns tracing on
TELEMETRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "endpoint": {"type": "string", "pattern": "^https?://[^/]"},
        "service_name": {"type": "string", "minLength": 1},
        "sample_ratio": {"type": "number", "minimum": 0, "maximum": 1},
        # sent to the collector with every export: as an http output's `headers`, credential headers
        # (Authorization, *key*, *token*...) are secrets; others plain text, or a reference when handier
        "headers": {
            "type": "object",
            "patternProperties": {CREDENTIAL_HEADER_PATTERN: SECRET_SCHEMA},
            "additionalProperties": TEXT_OR_SECRET_SCHEMA,
        },
    },
}

_PLUGIN_TABLE = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string", "minLength": 1}},
}
ROUTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "router": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "data_dir": {"type": "string", "minLength": 1},
                "schemas_dir": {"type": "string", "minLength": 1},
                "unmatched": {"enum": ["drop", "dead-letter"]},
                "max_pending_events": {"type": "integer", "minimum": 1},
                "shutdown_timeout": DURATION_SCHEMA,
                "announced_retention": DURATION_SCHEMA,
                "retention": DURATION_SCHEMA,
                "log_level": {"enum": ["debug", "info", "warning", "error"]},
                "retry": RETRY_SCHEMA,
                "admin": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "listen": {"type": "string", "minLength": 1},
                        "unmask": {"type": "boolean"},
                        "token": SECRET_SCHEMA,
                    },
                },
                "spool": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "backend": {"enum": ["sqlite", "postgresql"]},
                        "dsn": SECRET_SCHEMA,
                        "lease": DURATION_SCHEMA,
                    },
                },
                "telemetry": TELEMETRY_SCHEMA,
            },
        },
        "inputs": {
            "type": "object",
            "propertyNames": {"pattern": NAME_PATTERN},
            "additionalProperties": {
                **_PLUGIN_TABLE,
                "properties": {
                    "type": {"type": "string", "minLength": 1},
                    "validation": {"enum": ["strict", "warn", "off"]},
                    "unknown_triggers": {"enum": ["accept", "dead-letter"]},
                },
            },
        },
        "outputs": {
            "type": "object",
            "propertyNames": {"pattern": NAME_PATTERN},
            "additionalProperties": {
                **_PLUGIN_TABLE,
                "properties": {
                    "type": {"type": "string", "minLength": 1},
                    "concurrency": {"type": "integer", "minimum": 1, "maximum": 1024},
                    "retry": RETRY_SCHEMA,
                    "timeout": DURATION_SCHEMA,
                    "max_pending": {"type": "integer", "minimum": 1},
                    "rate_limit": RATE_LIMIT_SCHEMA,
                    "breaker": BREAKER_SCHEMA,
                    "ordering_key": {"type": "string", "minLength": 1},
                },
            },
        },
        "routes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "to"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "match": {"type": "object"},
                    "to": {
                        "oneOf": [
                            {"type": "string", "pattern": NAME_PATTERN},
                            {
                                "type": "array",
                                "minItems": 1,
                                "items": {"type": "string", "pattern": NAME_PATTERN},
                            },
                        ]
                    },
                    "stop": {"type": "boolean"},
                    "reshape": {"type": "object"},
                    "retry": RETRY_SCHEMA,
                    "ordering_key": {"type": "string", "minLength": 1},
                    "action": {"type": "object"},
                },
            },
        },
    },
}
