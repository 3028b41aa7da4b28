"""What the spool's records mean, the same on every backend: the column lists the backends read, the interface's
types made from those rows, and the WHERE clauses of the operator commands' filters.

No driver and no statement: each backend keeps its own SQL (its dialect: parameter marks, arrays or lists of
marks, upserts, locks) and runs it; this module names the columns a read selects and says what a row of them
is. Values are converted to the types the interface gives them (bytes for a BLOB or bytea, whichever buffer
type a driver reads it as): for a value of that type already, as SQLite's are, a conversion changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from event_router.core.spool import (
    ATTEMPTS_FIRST,
    ATTEMPTS_LAST,
    Attempt,
    DeadLetter,
    DeadLetterCount,
    DeadLetterFilter,
    KeptCursor,
    KeptEvent,
    OutputBacklog,
    PendingDelivery,
    Replay,
    SpoolStatus,
    StoredEvent,
)
from event_router.core.spool.history import PendingRow, RecordedAttempt

#: DeadLetter's fields, in order (`dead_letter`)
DEAD_LETTER_COLUMNS = (
    "dlid, event_id, trigger, source, output, route, reason, error, attempts, created_at, body, payload"
)
#: Attempt's fields after `delivery`, in order, as `attempts` holds them (`attempt`)
ATTEMPT_COLUMNS = "did, number, at, duration, outcome, status, error, answer"
#: Replay's fields, in order, as `replays` holds them (`replay`)
REPLAY_COLUMNS = "dlid, output, route, reason, error, attempts, created_at, replayed_at, replayed_by, replayed_as"
#: an event's row as `kept_event` and `stored_event` read it
EVENT_COLUMNS = "seq, id, trigger, received, body"
#: a pending delivery's row as `stored_events` and `event_history` show it (`pending_row`)
PENDING_COLUMNS = "did, output, route, attempts, due, last_error"


def dead_letter(row: Sequence[Any]) -> DeadLetter:
    """A dead letter from the columns of DEAD_LETTER_COLUMNS."""
    dlid, eid, trigger, source, output, route, reason, error, attempts, created_at, body, payload = row
    return DeadLetter(
        dlid=int(dlid),
        event_id=eid,
        trigger=trigger,
        source=source,
        output=output,
        route=route,
        reason=reason,
        error=error,
        attempts=int(attempts),
        created_at=float(created_at),
        body=bytes(body),
        payload=None if payload is None else bytes(payload),
    )


def attempt(row: Sequence[Any]) -> Attempt:
    """An `Attempt` from the columns of ATTEMPT_COLUMNS."""
    did, number, at, duration, outcome, status, error, answer = row
    return Attempt(
        int(did),
        int(number),
        float(at),
        float(duration),
        outcome,
        None if status is None else int(status),
        error,
        answer,
    )


def recorded_attempt(row: Sequence[Any]) -> RecordedAttempt:
    """A kept attempt as `history.histories` takes it, from the columns "dlid, replayed, output, route" and
    ATTEMPT_COLUMNS."""
    dlid, replayed, output, route, *rest = row
    return (
        None if dlid is None else int(dlid),
        None if replayed is None else int(replayed),
        output,
        route,
        attempt(rest),
    )


def replay(row: Sequence[Any]) -> Replay:
    """A `Replay` from the columns of REPLAY_COLUMNS."""
    dlid, output, route, reason, error, attempts, created_at, replayed_at, replayed_by, replayed_as = row
    return Replay(
        int(dlid),
        output,
        route,
        reason,
        error,
        int(attempts),
        float(created_at),
        float(replayed_at),
        replayed_by,
        int(replayed_as),
    )


def forgotten_attempts(attempts: Iterable[Attempt]) -> list[tuple[int, int]]:
    """What recording `attempts` makes the spool forget of their deliveries' attempts, to keep the first
    ATTEMPTS_FIRST and the last ATTEMPTS_LAST: per attempt past both, (delivery, n) for the attempts of that
    delivery numbered above ATTEMPTS_FIRST and up to n (more than one when some were never recorded)."""
    return [(a.delivery, a.number - ATTEMPTS_LAST) for a in attempts if a.number > ATTEMPTS_FIRST + ATTEMPTS_LAST]


def kept_event(row: Sequence[Any]) -> KeptEvent:
    """A kept event from the columns of EVENT_COLUMNS (its `received` is set: kept events are those with one)."""
    seq, eid, trigger, received, body = row
    return KeptEvent(int(seq), eid, trigger, float(received), bytes(body))


def pending_row(row: Sequence[Any], now: float) -> PendingRow:
    """A pending delivery from the columns of PENDING_COLUMNS; `now` in the spool's time base."""
    did, output, route, attempts, due, error = row
    return int(did), output, route, int(attempts), float(due) - now, error


def stored_event(row: Sequence[Any], pending: Iterable[PendingRow]) -> StoredEvent:
    """An event from the columns of EVENT_COLUMNS, with its pending deliveries (`pending_row`)."""
    seq, eid, trigger, received, body = row
    return StoredEvent(
        int(seq),
        eid,
        trigger,
        None if received is None else float(received),
        bytes(body),
        [PendingDelivery(*delivery) for delivery in pending],
    )


def output_backlogs(
    counts: Iterable[Sequence[Any]], next_retry: Callable[[str], Sequence[Any] | None], now: float
) -> dict[str, OutputBacklog]:
    """Per output (configured or not) that has pending deliveries, from its row of `counts` (output, pending,
    retrying, the oldest's `first_at`) and, when some retry, `next_retry(output)`'s row (due, attempts,
    last_error) of the one due first; `now` in the spool's time base."""
    out: dict[str, OutputBacklog] = {}
    for output, pending, retrying, first_at in counts:
        age = max(0.0, now - float(first_at))
        row = next_retry(output) if retrying else None
        if row is None:
            out[output] = OutputBacklog(int(pending), int(retrying or 0), oldest_pending_age=age)
        else:
            out[output] = OutputBacklog(int(pending), int(retrying), float(row[0]) - now, int(row[1]), row[2], age)
    return out


def spool_status(
    location: str,
    pending: int,
    now: float,
    oldest: Sequence[Any] | None,
    backlogs: dict[str, OutputBacklog],
    dead_letters: Iterable[Sequence[Any]],
) -> SpoolStatus:
    """`Spool.status` from its reads: the oldest pending delivery's row (its `first_at` first; None when nothing
    is pending) and the dead letters counted per (output, reason), in their order."""
    return SpoolStatus(
        location=location,
        pending_events=pending,
        oldest_pending_age=None if oldest is None else now - float(oldest[0]),
        backlogs=backlogs,
        dead_letters=[DeadLetterCount(output, reason, int(count)) for output, reason, count in dead_letters],
    )


def dead_letter_where(
    where: DeadLetterFilter, mark: str, ids: Callable[[Sequence[int]], tuple[str, list[Any]]]
) -> tuple[str, list[Any]]:
    """`where` as a WHERE clause on dead_letters ("" when it matches all) and the clause's parameters.

    `mark`: the driver's parameter mark ("?" sqlite3, "%s" psycopg); `ids`: the backend's clause for
    `where.ids` and its parameters (a list of marks, or one array)."""
    clauses: list[str] = []
    args: list[Any] = []
    if where.ids:
        clause, values = ids(where.ids)
        clauses.append(clause)
        args.extend(values)
    # as DeadLetterFilter says: since inclusive, until exclusive, upto inclusive
    compared: tuple[tuple[str, object], ...] = (
        ("output =", where.output),
        ("trigger =", where.trigger),
        ("reason =", where.reason),
        ("created_at >=", where.since),
        ("created_at <", where.until),
        ("dlid <=", where.upto),
        ("event_id =", where.event_id),
    )
    for comparison, value in compared:
        if value is not None:
            clauses.append(f"{comparison} {mark}")
            args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def kept_range(since: float, until: float, after: KeptCursor | None, mark: str) -> tuple[str, list[Any]]:
    """The WHERE clause of `kept_events` and its parameters (`mark`: the driver's parameter mark). The range on
    the `received` index starts at the cursor, not at `since`, so each page reads its own rows only; of the
    rows received at the cursor's very time, only those after its seq."""
    if after is None:
        return f" WHERE received >= {mark} AND received < {mark}", [since, until]
    return f" WHERE received >= {mark} AND received < {mark} AND (received > {mark} OR seq > {mark})", [
        max(since, after[0]),
        until,
        after[0],
        after[1],
    ]
