"""The plugin API: everything an input or output plugin may import, in one module.

`from event_router.api import Event, Input, Output, hookimpl, ...` is the whole contract between the router
and its plugins, built-in and third-party alike. Names in `__all__` keep their meaning across minor
releases; the submodules (`event_router.api.plugin`, ...) are where they are defined, not a promise.
Nothing here imports the core: the core and the plugins both build on this package.
"""

from event_router.api.backoff import Backoff
from event_router.api.batching import BatchStore, Item, Rejected
from event_router.api.decode import decode_event
from event_router.api.durations import DURATION_SCHEMA, parse_duration
from event_router.api.errors import (
    ConfigError,
    DeliveryError,
    PermanentError,
    RetryableError,
    RouterError,
    SpoolError,
    SpoolFull,
)
from event_router.api.event import Event, SourceMessage
from event_router.api.hookspecs import hookimpl
from event_router.api.listen import Listener, format_listen, listen_error, parse_listen
from event_router.api.plugin import (
    Delivery,
    EventSink,
    Input,
    Output,
    PluginContext,
    Readiness,
    SubmitResult,
    is_retryable,
    started_once,
)
from event_router.api.retry import RETRY_SCHEMA, RetryPolicy
from event_router.api.secrets import (
    SECRET_SCHEMA,
    TEXT_OR_SECRET_SCHEMA,
    Secret,
    is_credential_header,
    redact_url,
    refuse_unresolved,
    scrub,
    secret_schema,
    url_secrets,
)
from event_router.api.templates import MissingValueError, Template, TemplateError, compile_template
from event_router.api.throttle import LogThrottle

__all__ = [
    "DURATION_SCHEMA",
    "RETRY_SCHEMA",
    "SECRET_SCHEMA",
    "TEXT_OR_SECRET_SCHEMA",
    "Backoff",
    "BatchStore",
    "ConfigError",
    "Delivery",
    "DeliveryError",
    "Event",
    "EventSink",
    "Input",
    "Item",
    "Listener",
    "LogThrottle",
    "MissingValueError",
    "Output",
    "PermanentError",
    "PluginContext",
    "Readiness",
    "Rejected",
    "RetryPolicy",
    "RetryableError",
    "RouterError",
    "Secret",
    "SourceMessage",
    "SpoolError",
    "SpoolFull",
    "SubmitResult",
    "Template",
    "TemplateError",
    "compile_template",
    "decode_event",
    "format_listen",
    "hookimpl",
    "is_credential_header",
    "is_retryable",
    "listen_error",
    "parse_duration",
    "parse_listen",
    "redact_url",
    "refuse_unresolved",
    "scrub",
    "secret_schema",
    "started_once",
    "url_secrets",
]
