"""Kept events (`[router] retention`): what replaying them means (`event-router replay`).

With retention on, the spool keeps every event it stores until `retention` after the router received it,
also once it is delivered (`Spool.prune_kept` forgets it then). Replay gives the kept events received in a
time window new deliveries, with the same event ids, as a running router picks up a `dlq replay`'s.

Replayed events go through the routes in force now, not the deliveries they were first given: as an
EventBridge archive replays through the bus's current rules. A replay follows a fix (a receiver that lost
data, a route or reshape that was wrong), and the current routes are the fixed ones; the deliveries
recorded then may name outputs and routes the config has dropped since. So the spool records no
deliveries of a kept event, and `--output` selects among the deliveries the current routes make. Events are
not validated again: they were accepted when they came.

An event in the window still pending (a delivery of it waits for a retry, or an earlier replay's does) is
replayed all the same: it gets a further delivery. A replayed delivery gets the ordering key the current
routes give it and is stored like a new one, after whatever of its key is pending; one whose key cannot be
rendered (the event lacks a field the key names) is left out and counted, as the router would dead-letter it.
The spool stores, lists and prunes kept events (`event_router.core.spool.Spool`); this module decides what
each replayed event is sent to.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson

from event_router.api.event import Event
from event_router.core.model import RouterConfig
from event_router.core.plan import plan_event
from event_router.core.routing import trigger_matches
from event_router.core.spool import KeptCursor, KeptEvent, NewDelivery, Spool
from event_router.core.validation import SchemaRegistry

#: kept events read per page, and replayed per commit at most
PAGE = 500


@dataclass(frozen=True, slots=True)
class Selection:
    """Which kept events a replay sends again, and where."""

    #: received at or after (Unix time)
    since: float
    #: received before (Unix time)
    until: float
    #: a trigger glob (`transport.*`, `**`), as in a route's `match.trigger`; None: every trigger
    match: str | None = None
    #: only the deliveries the current routes make to this output; None: all of them
    output: str | None = None


@dataclass(slots=True)
class ReplayReport:
    #: kept events received in the window (counted before the replay: the progress bar's whole)
    total: int = 0
    #: of those, read so far
    examined: int = 0
    #: events given new deliveries (or, in a dry run, that would be)
    replayed: int = 0
    #: new deliveries per output
    deliveries: Counter[str] = field(default_factory=Counter)
    #: events whose trigger `match` does not admit
    other_trigger: int = 0
    #: events the current routes send nowhere (or not to `output`)
    unrouted: int = 0
    #: deliveries left out: their ordering key names a field the event lacks (no order to put them in)
    unkeyed: int = 0
    #: events the router pruned between the read and the replay (past the retention meanwhile)
    pruned: int = 0
    #: (received, seq) of the last kept event read
    cursor: KeptCursor | None = None
    #: received time of the first event read and selected but not replayed yet (None: every one selected so
    #: far is; what is left is past `cursor`). An interrupted replay goes on from here
    waiting: float | None = None


def deliveries_for(
    kept: KeptEvent, config: RouterConfig, schemas: SchemaRegistry, output: str | None
) -> tuple[list[NewDelivery], int]:
    """The deliveries the current routes make of `kept` (to `output` only, when given), not validated again,
    each with its ordering key; and how many more they make whose key cannot be rendered (left out)."""
    event = Event.from_json(kept.body)
    plan = plan_event(event, config=config, schemas=schemas, validation="off")
    chosen = [d for d in plan.deliveries if output is None or d.output == output]
    deliveries = [
        NewDelivery(d.output, d.route, orjson.dumps(d.payload) if d.reshaped else None, d.ordering_key)
        for d in chosen
        if d.key_error is None
    ]
    return deliveries, len(chosen) - len(deliveries)


#: given the events ready to go (each with its deliveries), waits as long as needed and says how many of
#: them, from the front, may be replayed now (at least one): `event-router replay`'s rate and room
Gate = Callable[[Sequence[tuple[KeptEvent, list[NewDelivery]]]], int]


def replay(
    spool: Spool,
    config: RouterConfig,
    schemas: SchemaRegistry,
    selection: Selection,
    *,
    dry_run: bool = False,
    gate: Gate | None = None,
    progress: Callable[[ReplayReport], None] | None = None,
    report: ReplayReport | None = None,
) -> ReplayReport:
    """Replay the kept events `selection` names, in the order they were received, a commit per batch of up to
    PAGE events (`gate` may make them smaller). `dry_run`: count what would be replayed, change nothing.
    `report` (filled as it goes, also when interrupted) says how far it got."""
    report = report if report is not None else ReplayReport()
    report.total = spool.count_kept(selection.since, selection.until)
    ready: list[tuple[KeptEvent, list[NewDelivery]]] = []
    while True:
        page = spool.kept_events(selection.since, selection.until, after=report.cursor, limit=PAGE)
        for kept in page:
            report.examined += 1
            if selection.match is not None and not trigger_matches(selection.match, kept.trigger):
                report.other_trigger += 1
                continue
            deliveries, unkeyed = deliveries_for(kept, config, schemas, selection.output)
            report.unkeyed += unkeyed
            if not deliveries:
                report.unrouted += 0 if unkeyed else 1
                continue
            ready.append((kept, deliveries))
            if report.waiting is None:
                report.waiting = kept.received
        if page:
            report.cursor = (page[-1].received, page[-1].seq)
        while ready and (len(ready) >= PAGE or not page):
            count = min(len(ready), PAGE) if dry_run or gate is None else max(1, gate(ready[:PAGE]))
            batch = ready[:count]
            if dry_run:
                present = {kept.seq for kept, _ in batch}
            else:
                present = spool.requeue_kept([(kept.seq, deliveries) for kept, deliveries in batch])
            for kept, deliveries in batch:
                if kept.seq in present:
                    report.replayed += 1
                    report.deliveries.update(d.output for d in deliveries)
                else:
                    report.pruned += 1
            del ready[:count]
            report.waiting = ready[0][0].received if ready else None
            if progress is not None:
                progress(report)
        if not page:
            return report
        if progress is not None:
            progress(report)
