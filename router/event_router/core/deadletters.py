"""Dead letters: what replaying one means, and how they and the spool are shown to people (`dlq`, `status`).

Replay puts a dead letter back in the pipeline: one that failed at an output is delivered to that output
again (same event id, same payload); one that never reached a route (invalid, unrouted) is validated and
routed again with the current router.toml. A running router picks replayed deliveries up within a second.
The spool stores, lists and deletes them (`event_router.core.spool.Spool`); this module decides.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from event_router.api.event import Event
from event_router.core.model import RouterConfig
from event_router.core.plan import plan_event
from event_router.core.spool import (
    DeadLetter,
    DeadLetterFilter,
    NewDelivery,
    OutputBacklog,
    Requeue,
    Spool,
    StillDead,
    StoreEvent,
)
from event_router.core.validation import SchemaRegistry


def iso_time(timestamp: float) -> str:
    """Unix time as people read it in `dlq` and `status`: UTC, to the second, ISO 8601."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def to_json(dl: DeadLetter, *, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": dl.dlid,
        "event_id": dl.event_id,
        "trigger": dl.trigger,
        "source": dl.source,
        "output": dl.output,
        "route": dl.route,
        "reason": dl.reason,
        "error": dl.error,
        "attempts": dl.attempts,
        "created_at": iso_time(dl.created_at),
    }
    if full:
        out["event"] = orjson.loads(dl.body)
        if dl.payload is not None:
            out["payload"] = orjson.loads(dl.payload)
    return out


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
) -> ReplayReport:
    """Put matching dead letters back into the pipeline, in batches of one commit each."""
    report = ReplayReport(problems=[])
    selected = spool.dead_letters(where)
    total = len(selected)
    for start in range(0, total, batch):
        chunk = selected[start : start + batch]
        outcomes = [outcome for dl in chunk if (outcome := _replay_one(dl, config, schemas, report)) is not None]
        spool.replay_dead_letters(outcomes)
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
        deliveries = [NewDelivery(dl.output, dl.route or "(replay)", dl.payload)]
    else:
        inp = config.inputs.get(event.source)
        plan = plan_event(
            event,
            config=config,
            schemas=schemas,
            validation=inp.validation if inp else "strict",
            unknown_triggers=inp.unknown_triggers if inp else "accept",
        )
        if plan.dead_letter is not None:
            report.dead_again += 1
            return StillDead(dl.dlid, plan.dead_letter[1])
        deliveries = [
            NewDelivery(d.output, d.route, orjson.dumps(d.payload) if d.reshaped else None) for d in plan.deliveries
        ]
    report.replayed += 1
    return Requeue(dl.dlid, StoreEvent(event.id, event.trigger, dl.body, deliveries))


def spool_status(config: RouterConfig, spool: Spool) -> dict[str, Any]:
    """What `event-router status` prints, from `spool` (opened to read).

    Keys are stable snake_case names; outputs are keyed by their name in router.toml. Every configured
    output is listed, and any output the spool still holds deliveries or dead letters for.
    """
    summary = spool.status()
    wall = time.time()
    age = summary.oldest_pending_age
    status: dict[str, Any] = {
        "spool": summary.location,
        "pending_events": summary.pending_events,
        "oldest_pending_age_seconds": None if age is None else round(age, 3),
        "outputs": {},
    }
    dead_per_output: dict[str, int] = {}
    for dead in summary.dead_letters:
        if dead.output is not None:
            dead_per_output[dead.output] = dead_per_output.get(dead.output, 0) + dead.count
    names = sorted(set(config.outputs) | set(summary.backlogs) | set(dead_per_output))
    for name in names:
        backlog = summary.backlogs.get(name, OutputBacklog(0, 0))
        due_in = backlog.next_retry_in
        status["outputs"][name] = {
            "configured": name in config.outputs,
            "pending": backlog.pending,
            "retrying": backlog.retrying,
            "next_retry_at": None if due_in is None else iso_time(wall + due_in),
            "next_retry_in_seconds": None if due_in is None else round(max(0.0, due_in), 3),
            "next_retry_attempt": None if due_in is None else backlog.next_retry_failures + 1,
            "last_error": backlog.last_error,
            "dead_letters": dead_per_output.get(name, 0),
        }
    status["dead_letters"] = {
        "total": sum(dead.count for dead in summary.dead_letters),
        "counts": [{"output": d.output, "reason": d.reason, "count": d.count} for d in summary.dead_letters],
    }
    return status
