"""An event's history as `Spool.event_history` tells it, put together from what every backend reads: the
event's rows, the pending deliveries' rows, the attempts kept, and the event's dead letters. No SQL: the
backends read, this module says what the rows mean."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from event_router.core.spool import Attempt, DeadLetter, DeliveryHistory, EventHistory, Replay

#: a pending delivery's row: (id, output, route, attempts, seconds until due, last error)
PendingRow = tuple[int, str, str, int, float, str | None]
#: a kept attempt with what its row says besides: (the dead letter that holds it, the replayed dead letter
#: its delivery was, output, route, the attempt)
RecordedAttempt = tuple[int | None, int | None, str, str, Attempt]


def histories(
    pending: Sequence[PendingRow],
    recorded: Sequence[RecordedAttempt],
    dead: Sequence[DeadLetter],
    replays: Sequence[Replay] = (),
) -> list[DeliveryHistory]:
    """Each delivery the rows name, by id: pending while its row is there; else replayed when its attempts say
    the dead letter it was was replayed (whichever dead letter holds them now: a later delivery's, replayed from
    it, that failed again); else a dead letter when its attempts were moved to one (or, without a dead letter
    id, when its last attempt kept failed: its dead letter was not recorded, which only a race between
    processes leaves); else delivered."""
    attempts: dict[int, list[Attempt]] = {}
    where: dict[int, tuple[str, str]] = {}
    moved: dict[int, int] = {}
    was: dict[int, int] = {}
    for dlid, replayed, output, route, attempt in recorded:
        attempts.setdefault(attempt.delivery, []).append(attempt)
        where.setdefault(attempt.delivery, (output, route))
        if replayed is not None:
            was[attempt.delivery] = replayed
        elif dlid is not None:
            moved[attempt.delivery] = dlid
    by_letter = {r.dead_letter: r for r in replays}
    for kept in attempts.values():
        kept.sort(key=lambda a: (a.number, a.at))
    letters = {dl.dlid: dl for dl in dead}
    out: dict[int, DeliveryHistory] = {}
    for did, output, route, tried, due_in, error in pending:
        out[did] = DeliveryHistory(
            did, output, route, "pending", tried, due_in, error, None, tuple(attempts.get(did, ()))
        )
    for did, kept in attempts.items():
        if did in out:
            continue
        output, route = where[did]
        last = kept[-1]
        if did in was:
            replay = by_letter.get(was[did])
            out[did] = DeliveryHistory(
                did,
                output,
                route,
                "replayed",
                replay.attempts if replay is not None else last.number,
                None,
                replay.error if replay is not None else last.error,
                was[did],
                tuple(kept),
                replay,
            )
            continue
        dlid = moved.get(did)
        if dlid is not None or last.outcome != "delivered":
            letter = letters.get(dlid) if dlid is not None else None
            out[did] = DeliveryHistory(
                did,
                output,
                route,
                "dead_letter",
                letter.attempts if letter is not None else last.number,
                None,
                letter.error if letter is not None else last.error,
                dlid,
                tuple(kept),
            )
        else:
            out[did] = DeliveryHistory(did, output, route, "delivered", last.number, history=tuple(kept))
    return [out[did] for did in sorted(out)]


def event_history(
    event_id: str,
    stored: Sequence[Sequence[Any]],
    dead: Sequence[DeadLetter],
    pending: Sequence[PendingRow],
    recorded: Sequence[RecordedAttempt],
    replays: Sequence[Replay] = (),
) -> EventHistory:
    """`Spool.event_history` from its reads: `stored`, the event's rows (seq, trigger, body, received) in the
    order they were stored, and `dead`, its dead letters in id order (not both empty: an event the spool knows
    nothing of has no history; a replay is kept by one of them); `pending`, `recorded` and `replays` as
    `histories` takes them. The latest stored row says what the event is; without one, its latest dead
    letter."""
    latest = stored[-1] if stored else None
    return EventHistory(
        event_id=event_id,
        trigger=latest[1] if latest is not None else dead[-1].trigger,
        body=bytes(latest[2]) if latest is not None else dead[-1].body,
        pending=bool(pending),
        received=None if latest is None or latest[3] is None else float(latest[3]),
        stored=latest is not None,
        deliveries=histories(pending, recorded, dead, replays),
        dead_letters=dead,
        replays=sorted(replays, key=lambda r: r.dead_letter),
    )
