"""What `Spool.store` decides the same way on every backend, before and after its statements: which
deliveries become dead letters instead of being stored (`park`: a refusal, or an output's backlog limit),
what each stored event answers (`results`), and when a new delivery with an ordering key is due (`due`).

No statement: each backend inserts the rows in its own dialect and passes in what it counted and got back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from event_router.core.spool import BLOCKED, DeadLetterReason, NewDelivery, Parked, Refused, StoreEvent

#: what each event `store` was given answers: per delivery, in order, its id, `Parked` or `Refused`
Results = list[int | Parked | Refused]


@dataclass(frozen=True, slots=True)
class Parking:
    """A delivery `store` keeps as a dead letter instead of storing it (`park`)."""

    #: its event's index among those given to `park`, and its own among the event's deliveries
    index: int
    position: int
    event: StoreEvent
    delivery: NewDelivery
    reason: DeadLetterReason
    #: the dead letter's error: the refusal's (cut to the column's 4000 characters), or the backlog's
    error: str
    #: the output's pending deliveries and its limit when it was full; -1, -1 for a refusal
    pending: int = -1
    limit: int = -1

    def result(self, dead_letter: int) -> Parked | Refused:
        """What `store` answers for it, kept as dead letter `dead_letter`."""
        if self.limit < 0:
            return Refused(dead_letter, self.error)
        return Parked(dead_letter, self.pending, self.limit)


def park(
    events: Sequence[StoreEvent], limits: Mapping[str, int], pending: Mapping[str, int]
) -> tuple[list[StoreEvent], list[Parking]]:
    """Hold each output to its limit: a delivery whose output has `limits[output]` deliveries pending, or more,
    becomes a dead letter (`output_backlog_full`). A delivery that is `refused` becomes a dead letter
    (`permanent`, its error) whatever the limit.

    Pending is `pending` (what the backend counts, see its `_park`) plus the deliveries admitted before it
    here. Returns the events with the deliveries that stay (an event with none parked is itself), and the
    parked ones in order: the backend inserts their dead letters and gives `results` their ids. Nothing to
    look at (the events themselves, none parked) without limits and refusals.
    """
    if not limits and not any(d.refused is not None for item in events for d in item.deliveries):
        return list(events), []
    admitted: dict[str, int] = {}
    kept: list[StoreEvent] = []
    parked: list[Parking] = []
    for index, item in enumerate(events):
        stays: list[NewDelivery] = []
        for position, delivery in enumerate(item.deliveries):
            if delivery.refused is not None:
                parked.append(Parking(index, position, item, delivery, "permanent", delivery.refused[:4000]))
                continue
            limit = limits.get(delivery.output)
            waiting = pending.get(delivery.output, 0) + admitted.get(delivery.output, 0)
            if limit is None or waiting < limit:
                stays.append(delivery)
                admitted[delivery.output] = admitted.get(delivery.output, 0) + 1
                continue
            error = (
                f"output {delivery.output}'s backlog is full: {waiting} deliveries pending, max_pending = "
                f"{limit}; replay this dead letter once it drains"
            )
            parked.append(Parking(index, position, item, delivery, "output_backlog_full", error, waiting, limit))
        kept.append(item if len(stays) == len(item.deliveries) else replace(item, deliveries=stays))
    return kept, parked


def results(
    events: Sequence[StoreEvent],
    kept: Sequence[StoreEvent],
    parked: Sequence[Parking],
    dead_letters: Sequence[int],
    stored: Iterable[list[int]],
) -> list[Results]:
    """What each of `events` answers: `kept` and `parked` as `park` returned them, `dead_letters` the ids of
    the parked ones' dead letters (in order), `stored` the delivery ids of each kept event that has deliveries
    left (in order: those without are not stored)."""
    held: list[dict[int, Parked | Refused]] = [{} for _ in events]
    for parking, dlid in zip(parked, dead_letters, strict=True):
        held[parking.index][parking.position] = parking.result(dlid)
    inserted = iter(stored)
    out: list[Results] = []
    for item, left, its in zip(events, kept, held, strict=True):
        dids = iter(next(inserted) if left.deliveries else ())
        out.append([its[i] if i in its else next(dids) for i in range(len(item.deliveries))])
    return out


def due(delivery: NewDelivery, now: float, waiting: set[tuple[str, str]]) -> float:
    """A new delivery's due time: now, or `BLOCKED` behind pending deliveries of its output and ordering key
    (`waiting`, to which the first of a pair is added: the later ones of one store wait behind it)."""
    if delivery.ordering_key is None:
        return now
    pair = (delivery.output, delivery.ordering_key)
    if pair in waiting:
        return BLOCKED
    waiting.add(pair)
    return now
