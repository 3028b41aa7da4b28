"""The API plugin authors write against: input and output base classes, and what the core hands them.

Built-in plugins use exactly this API and register through the same pluggy hooks as third-party ones
(see `hookspecs`). Events flow through plain async methods; pluggy stays out of the per-event path.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from anyio.abc import TaskStatus

from event_router.api.errors import DeliveryError, PermanentError, RetryableError, SpoolFull
from event_router.api.event import Event
from event_router.api.listen import Listener

__all__ = [
    "Delivery",
    "DeliveryError",
    "Event",
    "EventSink",
    "Input",
    "Output",
    "PermanentError",
    "PluginContext",
    "Readiness",
    "RetryableError",
    "SpoolFull",
    "SubmitResult",
    "started_once",
]


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What became of one submitted event. Once `submit` returns, every outcome is durable."""

    event_id: str
    #: duplicate: the event's `message` id from this input is already stored, or (a recovered event,
    #: `Event.recovered`) an event stored before announced the same; nothing was stored now.
    #: accepted: stored, also when some (or all) of its deliveries were parked as dead letters because their
    #: output's backlog was at its `max_pending`: acknowledge it like any other
    status: Literal["accepted", "dead_lettered", "unrouted", "duplicate"]
    #: validation errors (status dead_lettered, or accepted with validation = "warn")
    errors: tuple[str, ...] = ()
    dead_letter_id: int | None = None


class EventSink(Protocol):
    """How an input hands events to the core. One sink per input; it knows the input's name and policy."""

    async def submit(self, events: Sequence[Event]) -> list[SubmitResult]:
        """Validate, route and durably store `events`; return once they are on disk (or dead-lettered).

        Only then may the input acknowledge its source. Raises `SpoolFull` when the spool is at its
        limit: the input must push back (HTTP 503, stop consuming) and try again later.
        """
        ...

    async def announced(self, events: Sequence[Event]) -> list[bool]:
        """For each of `events`, whether a stored event announced the same already (its key is kept:
        `event_router.core.announced`). For gap recovery: a rebuilt change whose live event was stored need
        not wait to settle. False for an event without a key, and for one whose twin is not committed yet:
        `submit` of a recovered event still decides. One read for the batch."""
        ...

    async def reject(self, raw: bytes, reason: str, *, trigger: str | None, meta: Mapping[str, Any]) -> int:
        """Durably keep an input that cannot become an event (not JSON, no trigger...) as a dead letter.

        Returns the dead letter's id. The input may then acknowledge the source: the bytes are kept.
        """
        ...

    def refused(self, status: int) -> None:
        """Count a request the input answered with an error status (`requests_rejected_total{input,status}`).

        For inputs whose sender does not retry (a webhook): what they refuse is gone unless someone sees it.
        """
        ...

    def looked(self, outcome: str) -> None:
        """Count a gap-recovery look (`recovery_looks_total{input,outcome}`): `recovered` (it stored events),
        `nothing` (it stored none) or `failed` (the source did not answer as it should). Any but `failed`
        sets `recovery_last_look_timestamp_seconds{input}` to now. The events a look stores are counted by
        the core (`recovered_events_total{input,trigger}`)."""
        ...


@dataclass(slots=True)
class Delivery:
    """One (event, output) pair on its way out."""

    id: int
    event: Event
    #: the body to send: the normalised event as a dict, or what the route's `reshape` made of it
    payload: Any
    route: str
    #: 1 on the first try
    attempt: int
    #: keys of the route table the core does not interpret itself (e.g. `action` for the Connector output)
    route_options: Mapping[str, Any] = field(default_factory=dict)
    #: True when `payload` is the route's reshaped body rather than the whole event
    reshaped: bool = False
    #: when `payload` is the whole event: its JSON as the spool holds it, byte for byte what
    #: `orjson.dumps(payload)` gives, so an output that sends the event as JSON need not encode it again
    body: bytes | None = None
    #: with `[router.telemetry]` on: this attempt's W3C trace context (the span of the attempt), for an output
    #: to send on, as the `traceparent` (and `tracestate`) headers of its request or a message's headers;
    #: None with telemetry off
    traceparent: str | None = None
    tracestate: str | None = None
    #: what the receiver answered to a successful attempt, for the attempt's record (`event-router trace`): an
    #: output that knows sets them before it returns (an HTTP status, the start of the answer's body scrubbed
    #: of its secrets; the core keeps its first KiB). A failed attempt's are the `DeliveryError`'s
    status: int | None = None
    answer: str | None = None


@dataclass(slots=True)
class PluginContext:
    """What the core gives every plugin instance."""

    name: str
    data_dir: Path
    logger: logging.Logger
    #: the directory router.toml is in: relative paths in plugin tables are relative to it
    config_dir: Path
    #: hands new events to the core (an output's results, for routes to chain on); set by the running
    #: app, None in `check` and `test`. Events go through validation (off) and routing like any other.
    submit: Callable[[Sequence[Event]], Awaitable[list[SubmitResult]]] | None = None


#: what `guarantee()` says of a plugin that does not override it
UNKNOWN_GUARANTEE = "unknown: the plugin does not say"


class _Plugin(ABC):
    #: the `type = "..."` that selects this class in router.toml
    type_name: ClassVar[str]
    #: JSON Schema (Draft 2020-12) of the plugin's own keys in its table. Keys the core owns (`type`,
    #: and `validation`/`unknown_triggers` for inputs, `concurrency`/`retry`/`timeout`/`max_pending`/
    #: `rate_limit` for outputs) are removed before validation. Mark secret strings with `"x-secret":
    #: true`: the core resolves `{env=...}`/`{file=...}` references for them and never logs them
    #: (`"x-secret": "optional"`: a reference is resolved, plain text is not warned about;
    #: `secrets.TEXT_OR_SECRET_SCHEMA`; `"x-secret": "url"`: plain text is warned about only while it holds
    #: credentials; `secret_schema(..., url=True)`).
    config_schema: ClassVar[Mapping[str, Any]] = {"type": "object", "additionalProperties": False}

    def __init__(self, config: Mapping[str, Any], context: PluginContext) -> None:
        self.config = config
        self.context = context
        self.name = context.name
        self.log = context.logger

    def guarantee(self) -> str:
        """The delivery guarantee of this input or output as configured, in one phrase for `event-router check`,
        which prints it per route: `route "r": webhook "hooks" (<the input's>) -> http "crm" (<the output's>)`.

        An input says what becomes of an event from the moment its source publishes it until the router has
        stored it: what the sender and the broker keep, under which of this input's settings, and when events
        are lost or repeated. An output says the same from the spool until its receiver has the event. Start
        with the promise ("at least once", "at most once in transit"), then the exceptions. Cheap, no I/O.
        """
        return UNKNOWN_GUARANTEE

    def config_warnings(self) -> list[tuple[str, str]]:
        """Settings of this plugin's table that are valid but likely to cost events, as (key path in the
        table, message): `event-router check` prints each as a warning naming the key. Called once the
        plugin is constructed; the default has none."""
        return []


class Input(_Plugin):
    """Receives events from somewhere and hands them to the core through an `EventSink`.

    Subclasses implement `run`. Acknowledge a source only after `sink.submit` (or `sink.reject`) returned.
    """

    #: set by an input that accepts connections on a TCP port, so that the router can pass it a socket
    #: systemd holds (`Listener`); None for one that connects out (a broker's consumer)
    listener: Listener | None = None

    @abstractmethod
    async def run(self, sink: EventSink, *, task_status: TaskStatus[None]) -> None:
        """Consume until cancelled. Call `task_status.started()` only once you consume: the port listens,
        the queue is declared and bound and the consumer registered, the subscription is acknowledged. The
        router reports ready (READY=1, `/readyz`, `router ready`) once every input did, so what a source
        publishes from then on reaches the input. While the broker is down, retry with backoff without
        calling it (`started_once` helps when consuming starts again after a reconnect); raising before it
        stops the router at start-up.

        Cancellation is how the core stops an input (SIGTERM, reload): stop taking new events, and
        leave unacknowledged ones to the source (the broker redelivers them).
        """

    #: True for an input that rebuilds events other inputs missed (gap recovery, `meta.recovered`)
    rebuilds: ClassVar[bool] = False

    def covers(self) -> str | None:
        """The live input (by name) whose missed events this input rebuilds, set with its `covers` key.

        Its events then carry that input's name as `source`, so they take that input's routes, and
        `meta.recovered_by` with this input's name. The config loader checks that the input exists;
        `event-router check` adds this input's `guarantee()` to that input's lines instead of printing
        lines of its own. None: its events carry its own name.
        """
        return None

    def gap_detected(self, covered: str, reason: str) -> None:
        """The core saw a gap in what `covered` (the input this one `covers()`) takes: it was not ready and
        is again (a broker reconnecting, a webhook at max_connections, a spool that could not write), or it
        refused requests. What the source sent meanwhile may be lost: an input that rebuilds such events
        looks again soon rather than at its next interval. Called on the event loop; must not block."""
        return

    def is_ready(self) -> bool:
        """True while the input can take events (connected to its broker...). Feeds /readyz."""
        return True

    def not_ready_reason(self) -> str | None:
        """Why the input is not ready, for /readyz (None: ready, or no more to say than `is_ready`)."""
        return None


class Readiness:
    """What an input that connects to a source (a broker) answers to `is_ready()` and `not_ready_reason()`.

    Ready while it consumes; else the reason is the last connection or set-up error, as the input logged
    it, until it consumes again. `/readyz`, the console and `event-router status` show that reason, so the
    operator who sees "not ready" also sees why without reading the log. /readyz is open to whoever
    reaches the admin endpoint: an error text that may hold a password is scrubbed before `failed`.
    """

    __slots__ = ("_reason", "ready")

    def __init__(self, connecting: str = "connecting: no answer yet") -> None:
        self.ready = False
        # before the first attempt ends: what it is waiting for
        self._reason = connecting

    def consuming(self) -> None:
        """Connected and consuming: ready. Until the next error is known, a lost connection says so."""
        self.ready = True
        self._reason = "the connection ended; reconnecting"

    def stopped(self) -> None:
        """Not consuming (the connection is closing); the reason stays the last one known."""
        self.ready = False

    def failed(self, reason: str) -> None:
        """An attempt failed with `reason` (one line, as logged; no secrets): not ready, for that reason."""
        self.ready = False
        self._reason = reason

    def reason(self) -> str | None:
        """For `not_ready_reason()`: None while ready."""
        return None if self.ready else self._reason


def started_once(task_status: TaskStatus[None]) -> Callable[[], None]:
    """A callable that calls `task_status.started()` the first time only: an input calls it each time it
    consumes, after every reconnect, and the router is told once."""
    called = False

    def started() -> None:
        nonlocal called
        if not called:
            called = True
            task_status.started()

    return started


class Output(_Plugin):
    """Sends deliveries somewhere. The core calls `deliver` concurrently up to the output's `concurrency`.

    Raise `RetryableError` or `PermanentError` (both from `event_router.api.plugin`) on failure; any other
    exception counts as retryable. Return normally only once the receiver has the event.
    """

    #: Outputs that gain from batching (one fsync for many lines) set this above 1 and override
    #: `deliver_batch`.
    max_batch: ClassVar[int] = 1

    async def open(self) -> None:
        """Set up connections or files. Called once before the first delivery."""
        return

    async def close(self) -> None:
        """Release what `open` set up. Called once at shutdown or when a reload replaces the output."""
        return

    @abstractmethod
    async def deliver(self, delivery: Delivery) -> None:
        """Deliver one event; raise a `DeliveryError` subclass on failure."""

    @classmethod
    def check_route_options(
        cls, options: Mapping[str, Any], output: Mapping[str, Any] | None = None
    ) -> list[tuple[str, str]]:
        """Problems with the route keys this output reads (e.g. `action`), as (key path, message).

        Called by the config loader for every route that targets this output type, so `event-router check`
        reports them; the paths are relative to the route table. `output` is the targeted output's table as
        written (unvalidated: its own errors are reported separately), for options whose validity depends on it.
        """
        return []

    def describe(self, delivery: Delivery) -> dict[str, Any]:
        """What this output would send for `delivery`, for the `event-router test` dry run. Sends nothing."""
        return {"body": delivery.payload}

    async def deliver_batch(self, deliveries: Sequence[Delivery]) -> list[BaseException | None]:
        """Deliver several; return one outcome per delivery (None = delivered), in the same order."""
        outcomes: list[BaseException | None] = []
        for delivery in deliveries:
            try:
                await self.deliver(delivery)
            except Exception as exc:  # each delivery's failure is its own outcome
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes


def is_retryable(exc: BaseException) -> bool:
    """Failures are retryable unless the output said otherwise."""
    return not isinstance(exc, DeliveryError) or exc.retryable


PluginClass = type[Input] | type[Output]
