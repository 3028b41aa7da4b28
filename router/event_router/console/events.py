"""What the console finds of events: the events page's search (`search`) and one event's trace (`trace`).

Both are made of what the spool keeps today, read on the console's own read-only spool (`Reader`):
- kept events (`[router] retention`): each event received in the window, delivered or still pending;
- an event's stored rows (`Spool.stored_events`): its pending deliveries, with attempts and last error;
- dead letters: what failed for good, with reason, error and attempts.
What happens next shows live on the pages (they follow `GET /tap`). Without retention a delivered event
is forgotten: the search finds dead letters, and an event by id only while it is pending.

Each delivery attempt (its time, outcome, HTTP status, duration, error) comes from the spool's attempt
history (`Spool.event_history`, as `event-router trace` reads it): `trace` fills a `Trace`'s `attempts` from
it, and `Trace.timeline` shows them in time order with the rest.

Every function here is synchronous (the spool's reads are): the console runs them in a worker thread.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from event_router.api.event import Event
from event_router.core.masking import mask
from event_router.core.model import RouterConfig
from event_router.core.plan import plan_event
from event_router.core.routing import trigger_matches
from event_router.core.spool import (
    DeadLetter,
    DeadLetterFilter,
    KeptCursor,
    PendingDelivery,
    Replay,
    Spool,
    SpoolSettings,
    StoredEvent,
)
from event_router.core.spool.backend import open_spool
from event_router.core.validation import SchemaRegistry

#: the outcomes the events page can search for: kept by the spool (delivered or pending), or dead-lettered
OUTCOMES = ("stored", "dead_lettered")
#: events and dead letters one search reads at most, and rows it shows at most
SCAN_LIMIT = 5000
RESULT_LIMIT = 200
#: of an event id, the stored rows and dead letters a trace reads at most
TRACE_LIMIT = 50


class Reader:
    """The console's read-only spool beside the router's (as `event-router status` opens one): its reads,
    however long, never hold the router's own connection, which the delivery loop reads on. One thread at a
    time uses it (the console runs its reads through one limiter); opened at the first read."""

    def __init__(self, data_dir: Path, settings: SpoolSettings):
        self._data_dir = data_dir
        self._settings = settings
        self._spool: Spool | None = None
        self._lock = threading.Lock()

    def get(self) -> Spool:
        with self._lock:
            if self._spool is None:
                self._spool = open_spool(self._data_dir, "readonly", self._settings)
            return self._spool

    def close(self) -> None:
        with self._lock:
            if self._spool is not None:
                self._spool.close()
                self._spool = None


@dataclass(frozen=True, slots=True)
class Query:
    """The events page's search: each field set must match."""

    #: received (kept events) or dead-lettered at or after, and before (Unix times)
    since: float
    until: float
    #: a trigger glob, as a route's `match.trigger` (`transport.*`)
    trigger: str | None = None
    event_id: str | None = None
    #: a route's name: a dead letter's route, or a kept event's routes under the configuration in force
    route: str | None = None
    #: one of OUTCOMES
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class Found:
    """One row of the events page."""

    event_id: str | None
    trigger: str | None
    #: Unix time: received (a kept event) or dead-lettered
    time: float | None
    source: str | None
    routes: Sequence[str]
    outcome: str
    #: a dead letter's reason and output, or a kept event's outputs
    detail: str = ""
    dead_letter: int | None = None


@dataclass(slots=True)
class SearchResult:
    found: list[Found] = field(default_factory=list)
    #: kept events and dead letters read
    examined: int = 0
    #: the search stopped at SCAN_LIMIT or RESULT_LIMIT: a narrower window finds the rest
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt of an event, from the spool's attempt history."""

    time: float
    output: str
    route: str
    attempt: int
    outcome: str
    error: str | None = None
    #: what the receiver answered (an HTTP status), when the output says; how long the attempt took (s)
    status: int | None = None
    duration: float | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """A line of a trace's timeline."""

    #: Unix time; None for "now" (a pending delivery's state)
    time: float | None
    kind: str
    output: str | None = None
    route: str | None = None
    text: str = ""
    dead_letter: int | None = None


@dataclass(slots=True)
class Trace:
    """What is known of one event id."""

    event_id: str
    trigger: str | None
    source: str | None
    #: Unix time the router received it (kept events only)
    received: float | None
    #: the event as stored (its JSON, or its bytes as text when it was not JSON)
    body: bytes
    #: routes the configuration in force sends it to: (route, its outputs)
    routes: list[tuple[str, list[str]]]
    stored: list[StoredEvent]
    dead_letters: list[DeadLetter]
    #: the attempt history's records (`Spool.event_history`), oldest first per delivery
    attempts: list[Attempt] = field(default_factory=list)
    #: its dead letters that were replayed (gone from `dead_letters`; their attempts are in `attempts`)
    replays: list[Replay] = field(default_factory=list)

    @property
    def pending(self) -> list[PendingDelivery]:
        return [d for row in self.stored for d in row.deliveries]

    def timeline(self) -> list[Step]:
        """Received, attempts, dead letters in time order; pending deliveries last (their state now)."""
        steps: list[Step] = []
        for row in self.stored:
            if row.received is not None:
                steps.append(Step(row.received, "received", text=f"stored as spool event {row.seq}"))
        for attempt in self.attempts:
            answered = [f"HTTP {attempt.status}"] if attempt.status is not None else []
            if attempt.duration is not None:
                answered.append(f"{attempt.duration * 1000:.0f} ms")
            text = f"attempt {attempt.attempt}" + (f" ({', '.join(answered)})" if answered else "")
            steps.append(
                Step(
                    attempt.time,
                    attempt.outcome,
                    attempt.output,
                    attempt.route,
                    text + (f": {attempt.error}" if attempt.error else ""),
                )
            )
        for dl in self.dead_letters:
            steps.append(
                Step(
                    dl.created_at,
                    "dead_lettered",
                    dl.output,
                    dl.route,
                    f"{dl.reason} after {dl.attempts} attempt(s)" + (f": {dl.error}" if dl.error else ""),
                    dl.dlid,
                )
            )
        for replay in self.replays:
            said = f"{replay.reason} after {replay.attempts} attempt(s)" + (f": {replay.error}" if replay.error else "")
            steps.append(Step(replay.created_at, "dead_lettered", replay.output, replay.route, said))
            by = f" by {replay.replayed_by}" if replay.replayed_by else ""
            steps.append(
                Step(
                    replay.replayed_at,
                    "replayed",
                    replay.output,
                    replay.route,
                    f"dead letter {replay.dead_letter} replayed{by} as delivery {replay.replayed_as}",
                )
            )
        steps.sort(key=lambda step: step.time or 0.0)
        for delivery in self.pending:
            if math.isinf(delivery.due_in):  # BLOCKED: due once the one before it of its ordering key is done
                when = "waiting behind an earlier delivery of its ordering key"
            else:
                when = "due now" if delivery.due_in <= 0 else f"next attempt in {delivery.due_in:.0f}s"
            if delivery.attempts:
                failed = f"{delivery.attempts} failed attempt(s), {when}"
            else:
                failed = "not attempted yet" + (f", {when}" if math.isinf(delivery.due_in) else "")
            error = f"; last error: {delivery.last_error}" if delivery.last_error else ""
            steps.append(Step(None, "pending", delivery.output, delivery.route, failed + error))
        return steps


def current_routes(body: bytes, config: RouterConfig, schemas: SchemaRegistry) -> list[tuple[str, list[str]]]:
    """The routes the configuration in force sends this stored event to (not validated again), with their
    outputs; none for what is not an event (an undecodable dead letter)."""
    try:
        event = Event.from_json(body)
    except (ValueError, TypeError, KeyError):
        return []
    plan = plan_event(event, config=config, schemas=schemas, validation="off")
    routes: dict[str, list[str]] = {}
    for delivery in plan.deliveries:
        routes.setdefault(delivery.route, []).append(delivery.output)
    for route in plan.routes:
        routes.setdefault(route.name, [])
    return list(routes.items())


def search(spool: Spool, config: RouterConfig, schemas: SchemaRegistry, query: Query) -> SearchResult:
    """The events page's rows, newest first: kept events and dead letters in the window that match."""
    result = SearchResult()
    if query.event_id:
        found = trace(spool, config, schemas, query.event_id)
        if found is not None:
            result.found = [row for row in _rows_of(found) if _wanted(row, query)]
            result.examined = len(found.stored) + len(found.dead_letters)
        return result
    if query.outcome in (None, "stored"):
        _search_kept(spool, config, schemas, query, result)
    if query.outcome in (None, "dead_lettered"):
        where = DeadLetterFilter(since=query.since, until=query.until)
        letters = spool.dead_letters(where, limit=SCAN_LIMIT)
        result.examined += len(letters)
        if len(letters) >= SCAN_LIMIT:
            result.truncated = True
        result.found.extend(row for dl in letters if _wanted(row := _dead_row(dl), query))
    result.found.sort(key=lambda row: row.time or 0.0, reverse=True)
    if len(result.found) > RESULT_LIMIT:
        del result.found[RESULT_LIMIT:]
        result.truncated = True
    return result


def _search_kept(
    spool: Spool, config: RouterConfig, schemas: SchemaRegistry, query: Query, result: SearchResult
) -> None:
    cursor: KeptCursor | None = None
    read = 0
    while read < SCAN_LIMIT:
        page = spool.kept_events(query.since, query.until, after=cursor, limit=min(500, SCAN_LIMIT - read))
        if not page:
            return
        read += len(page)
        result.examined += len(page)
        for kept in page:
            if query.trigger and not trigger_matches(query.trigger, kept.trigger):
                continue
            routes = current_routes(kept.body, config, schemas)
            outputs = sorted({output for _, outs in routes for output in outs})
            row = Found(
                kept.event_id,
                kept.trigger,
                kept.received,
                _source(kept.body),
                [name for name, _ in routes],
                "stored",
                ", ".join(outputs),
            )
            if _wanted(row, query):
                result.found.append(row)
        cursor = (page[-1].received, page[-1].seq)
    result.truncated = True


def _wanted(row: Found, query: Query) -> bool:
    if query.trigger and not (row.trigger and trigger_matches(query.trigger, row.trigger)):
        return False
    if query.route and query.route not in row.routes:
        return False
    return not query.outcome or row.outcome == query.outcome


def _dead_row(dl: DeadLetter) -> Found:
    detail = dl.reason + (f" at {dl.output}" if dl.output else "")
    return Found(
        dl.event_id,
        dl.trigger,
        dl.created_at,
        dl.source,
        [dl.route] if dl.route else [],
        "dead_lettered",
        detail,
        dl.dlid,
    )


def _rows_of(found: Trace) -> list[Found]:
    rows = [
        Found(
            row.event_id,
            row.trigger,
            row.received,
            found.source,
            [name for name, _ in found.routes],
            "stored",
            ", ".join(sorted({d.output for d in row.deliveries})) or "nothing pending",
        )
        for row in found.stored
    ]
    return rows + [_dead_row(dl) for dl in found.dead_letters]


def _source(body: bytes) -> str | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    source = value.get("source") if isinstance(value, dict) else None
    return source if isinstance(source, str) else None


def trace(spool: Spool, config: RouterConfig, schemas: SchemaRegistry, event_id: str) -> Trace | None:
    """What the spool knows of `event_id` (None: nothing, which without retention is every delivered event)."""
    stored = spool.stored_events(event_id, limit=TRACE_LIMIT)
    dead = spool.dead_letters(DeadLetterFilter(event_id=event_id), limit=TRACE_LIMIT)
    if not stored and not dead:
        return None
    body = stored[-1].body if stored else dead[-1].body
    received = next((row.received for row in stored if row.received is not None), None)
    history = spool.event_history(event_id)
    attempts = [
        Attempt(a.at, d.output, d.route, a.number, a.outcome, a.error, a.status, a.duration)
        for d in (history.deliveries if history is not None else ())
        for a in d.history
    ]
    return Trace(
        event_id=event_id,
        trigger=stored[-1].trigger if stored else dead[-1].trigger,
        source=_source(body) or (dead[-1].source if dead else None),
        received=received,
        body=body,
        routes=current_routes(body, config, schemas),
        stored=stored,
        dead_letters=dead,
        attempts=attempts,
        replays=list(history.replays) if history is not None else [],
    )


def shown_event(body: bytes, schemas: SchemaRegistry, *, unmask: bool) -> Any:
    """A stored event as a page shows it: `data` and `meta` masked as the tap masks them (`core.masking.mask`:
    ids, types and dates stay, and in `data` the values its trigger's schema fixes) unless `unmask`
    (`[router.admin] unmask = true` and asked for). Not JSON (an undecodable dead letter): its text, or
    only its size when masked."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        if unmask:
            return body.decode("utf-8", errors="replace")
        return f"({len(body)} bytes that are not JSON; masked)"
    if unmask or not isinstance(value, Mapping):
        return value if unmask else mask(value)
    trigger = value.get("trigger")
    fixed = schemas.fixed_values(trigger) if isinstance(trigger, str) else None
    return {
        key: mask(item, fixed) if key == "data" else mask(item) if key == "meta" else item
        for key, item in value.items()
    }


def shown_payload(payload: bytes | None, *, unmask: bool) -> Any:
    """A route's reshaped body as a page shows it, masked as `shown_event` masks `meta`: a template may
    have put anything anywhere, so no schema says what is fixed in it."""
    if payload is None:
        return None
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return f"({len(payload)} bytes)"
    return value if unmask else mask(value)


__all__ = [
    "OUTCOMES",
    "Attempt",
    "Found",
    "Query",
    "Reader",
    "SearchResult",
    "Step",
    "Trace",
    "search",
    "shown_event",
    "shown_payload",
    "trace",
]
