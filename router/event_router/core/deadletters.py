"""Dead letters: what replaying one means (`dlq replay`; how they are shown is `event_router.ops.show`).

Replay puts a dead letter back in the pipeline: one that failed at an output is delivered to that output
again (same event id, same payload); one that never reached a route (invalid, unrouted) is validated and
routed again with the current router.toml. A running router picks replayed deliveries up within a second.
A replay requeues whatever it selects, past an output's `max_pending` too (the operator asked for those
deliveries, parked ones included): the running router counts them, and parks that output's new deliveries
until its backlog is below the limit again.
A replayed delivery gets the ordering key the current router.toml gives it and is stored like a new one:
after whatever of its key is pending, the deliveries stored after it first included. One whose key cannot be
rendered stays a dead letter (`StillDead`), as the event would not be put in order.
With `[router] retention`, a dead letter of a delivery of a kept event is delivered as that event: the spool
adds the new delivery to the kept event rather than storing a copy (`Requeue`), so `trace` shows its attempts
with the event and the event stays kept once. Either way the spool keeps the dead letter's attempts, and when
and by whom it was replayed, with the new delivery (`Spool`, `Replay`): `trace` shows the delivery that was
dead-lettered, then the replayed one.
The spool stores, lists and deletes them (`event_router.core.spool.Spool`); this module decides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

from event_router.api.event import Event
from event_router.api.templates import MissingValueError
from event_router.core.model import RouterConfig
from event_router.core.plan import key_error, ordering_key_for, plan_for_input
from event_router.core.spool import (
    DeadLetter,
    DeadLetterFilter,
    NewDelivery,
    Requeue,
    Spool,
    StillDead,
    StoreEvent,
)
from event_router.core.validation import SchemaRegistry


@dataclass(slots=True)
class ReplayReport:
    replayed: int = 0
    dead_again: int = 0
    skipped: int = 0
    #: (dead letter id, why it was not replayed)
    problems: list[tuple[int, str]] | None = None


def replay(
    spool: Spool,
    config: RouterConfig,
    schemas: SchemaRegistry,
    where: DeadLetterFilter,
    *,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 500,
    by: str | None = None,
) -> ReplayReport:
    """Put matching dead letters back into the pipeline, in batches of one commit each; `by`: who asked (the
    spool records it with each replay, for `trace`)."""
    report = ReplayReport(problems=[])
    selected = spool.dead_letters(where)
    total = len(selected)
    for start in range(0, total, batch):
        chunk = selected[start : start + batch]
        outcomes = [outcome for dl in chunk if (outcome := _replay_one(dl, config, schemas, report)) is not None]
        spool.replay_dead_letters(outcomes, by)
        if progress is not None:
            progress(min(start + batch, total), total)
    return report


def _replay_one(
    dl: DeadLetter, config: RouterConfig, schemas: SchemaRegistry, report: ReplayReport
) -> Requeue | StillDead | None:
    """What replaying `dl` comes to (None: skipped, with the reason in `report.problems`), counted in `report`."""
    assert report.problems is not None
    if dl.reason == "undecodable":
        report.skipped += 1
        report.problems.append((dl.dlid, "undecodable input: fix and re-send it at the source; purge it here"))
        return None
    event = Event.from_dict(orjson.loads(dl.body))
    if dl.output is not None:
        if dl.output not in config.outputs:
            report.skipped += 1
            report.problems.append((dl.dlid, f"output {dl.output!r} is not configured any more"))
            return None
        route = dl.route or "(replay)"
        try:
            key = ordering_key_for(config, dl.output, route, event.to_dict())
        except MissingValueError as exc:
            report.dead_again += 1
            return StillDead(dl.dlid, key_error(dl.output, route, exc))
        deliveries = [NewDelivery(dl.output, route, dl.payload, key)]
    else:
        plan = plan_for_input(event, config.inputs.get(event.source), config=config, schemas=schemas)
        if plan.dead_letter is not None:
            report.dead_again += 1
            return StillDead(dl.dlid, plan.dead_letter[1])
        refused = next((d.key_error for d in plan.deliveries if d.key_error is not None), None)
        if refused is not None:
            report.dead_again += 1
            return StillDead(dl.dlid, refused)
        deliveries = [
            NewDelivery(d.output, d.route, orjson.dumps(d.payload) if d.reshaped else None, d.ordering_key)
            for d in plan.deliveries
        ]
    report.replayed += 1
    return Requeue(dl.dlid, StoreEvent(event.id, event.trigger, dl.body, deliveries))
