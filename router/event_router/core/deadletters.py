"""Dead letters: list, show, replay, purge. Works on the spool file, whether the router runs or not.

Replay puts a dead letter back in the pipeline: one that failed at an output is delivered to that output
again (same event id, same payload); one that never reached a route (invalid, unrouted) is validated and
routed again with the current router.toml. A running router picks replayed deliveries up within a second.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from event_router.api.event import Event
from event_router.core.clock import spool_now
from event_router.core.model import RouterConfig
from event_router.core.plan import plan_event
from event_router.core.spool import (
    OLDEST_PENDING,
    PENDING_EVENTS,
    DeadLetter,
    DeadLetterFilter,
    OutputBacklog,
    Spool,
    connect,
    output_backlogs,
)
from event_router.core.validation import SchemaRegistry

_COLUMNS = "dlid, event_id, trigger, source, output, route, reason, error, attempts, created_at, body, payload"


def list_dead_letters(conn: sqlite3.Connection, where: DeadLetterFilter, limit: int | None = None) -> list[DeadLetter]:
    clause, args = where.where()
    sql = f"SELECT {_COLUMNS} FROM dead_letters{clause} ORDER BY dlid"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return [DeadLetter(*row) for row in conn.execute(sql, args)]


def _iso(timestamp: float) -> str:
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
        "created_at": _iso(dl.created_at),
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
    """Put matching dead letters back into the pipeline, in batches of one transaction each."""
    report = ReplayReport(problems=[])
    assert spool._reader is not None
    selected = list_dead_letters(spool._reader, where)
    total = len(selected)
    for start in range(0, total, batch):
        chunk = selected[start : start + batch]
        spool.write_sync(partial(_replay_chunk, chunk=chunk, config=config, schemas=schemas, report=report))
        if progress is not None:
            progress(min(start + batch, total), total)
    return report


def _replay_chunk(
    conn: sqlite3.Connection,
    *,
    chunk: list[DeadLetter],
    config: RouterConfig,
    schemas: SchemaRegistry,
    report: ReplayReport,
) -> None:
    assert report.problems is not None
    # in the running router's time base (a wall-clock jump may have moved it): due now, not a jump away
    now = spool_now(conn)
    for dl in chunk:
        body = orjson.loads(dl.body)
        if dl.reason == "undecodable":
            report.skipped += 1
            report.problems.append((dl.dlid, "undecodable input: fix and re-send it at the source; purge it here"))
            continue
        event = Event.from_dict(body)
        if dl.output is not None:
            if dl.output not in config.outputs:
                report.skipped += 1
                report.problems.append((dl.dlid, f"output {dl.output!r} is not configured any more"))
                continue
            deliveries = [(dl.output, dl.route or "(replay)", dl.payload)]
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
                conn.execute(
                    "UPDATE dead_letters SET error = ?, attempts = attempts + 1 WHERE dlid = ?",
                    (plan.dead_letter[1][:4000], dl.dlid),
                )
                continue
            deliveries = [(d.output, d.route, orjson.dumps(d.payload) if d.reshaped else None) for d in plan.deliveries]
        if deliveries:
            seq = conn.execute(
                "INSERT INTO events (id, trigger, stored_at, body) VALUES (?, ?, ?, ?)",
                (event.id, event.trigger, now, dl.body),
            ).lastrowid
            conn.executemany(
                "INSERT INTO deliveries (seq, output, route, payload, due, first_at) VALUES (?,?,?,?,?,?)",
                [(seq, output, route, payload, now, now) for output, route, payload in deliveries],
            )
        conn.execute("DELETE FROM dead_letters WHERE dlid = ?", (dl.dlid,))
        report.replayed += 1


def count_dead_letters(conn: sqlite3.Connection, where: DeadLetterFilter) -> tuple[int, int | None]:
    """How many dead letters match, and the highest matching id (None when none does)."""
    clause, args = where.where()
    count, highest = conn.execute(f"SELECT COUNT(*), MAX(dlid) FROM dead_letters{clause}", args).fetchone()
    return int(count), highest


def purge(spool: Spool, where: DeadLetterFilter, *, upto: int | None = None) -> int:
    """Delete the matching dead letters; with `upto`, only those with ids up to it (the ones a person
    was shown and confirmed, not those stored since)."""
    clause, args = where.where()
    if upto is not None:
        clause += (" AND" if clause else " WHERE") + " dlid <= ?"
        args.append(upto)
    count: int = spool.write_sync(lambda conn: conn.execute(f"DELETE FROM dead_letters{clause}", args).rowcount)
    return count


def spool_status(config: RouterConfig) -> dict[str, Any]:
    """What `event-router status` prints; reads the spool without writing to it.

    Keys are stable snake_case names; outputs are keyed by their name in router.toml. Every configured
    output is listed, and any output the spool still holds deliveries or dead letters for.
    """
    path = config.data_dir / "spool.db"
    status: dict[str, Any] = {
        "spool": str(path),
        "pending_events": 0,
        "oldest_pending_age_seconds": None,
        "outputs": {},
        "dead_letters": {"total": 0, "counts": []},
    }
    backlogs: dict[str, OutputBacklog] = {}
    counts: list[tuple[str | None, str, int]] = []
    now = wall = 0.0
    if path.exists():
        conn = connect(path, readonly=True)
        try:
            status["pending_events"] = conn.execute(PENDING_EVENTS).fetchone()[0]
            now, wall = spool_now(conn), time.time()
            oldest = conn.execute(OLDEST_PENDING).fetchone()
            if oldest is not None:
                status["oldest_pending_age_seconds"] = round(now - oldest[0], 3)
            backlogs = output_backlogs(conn)
            counts = conn.execute(
                "SELECT output, reason, COUNT(*) FROM dead_letters GROUP BY 1, 2 ORDER BY 1, 2"
            ).fetchall()
        finally:
            conn.close()
    dead_per_output: dict[str, int] = {}
    for output, _reason, count in counts:
        if output is not None:
            dead_per_output[output] = dead_per_output.get(output, 0) + count
    names = sorted(set(config.outputs) | set(backlogs) | set(dead_per_output))
    for name in names:
        backlog = backlogs.get(name, OutputBacklog(0, 0))
        due = backlog.next_retry_due
        status["outputs"][name] = {
            "configured": name in config.outputs,
            "pending": backlog.pending,
            "retrying": backlog.retrying,
            # spool times are in the router's clock base (event_router.core.clock): shown as wall-clock time
            "next_retry_at": None if due is None else _iso(wall + due - now),
            "next_retry_in_seconds": None if due is None else round(max(0.0, due - now), 3),
            "next_retry_attempt": None if due is None else backlog.next_retry_failures + 1,
            "last_error": backlog.last_error,
            "dead_letters": dead_per_output.get(name, 0),
        }
    status["dead_letters"] = {
        "total": sum(count for _, _, count in counts),
        "counts": [{"output": output, "reason": reason, "count": count} for output, reason, count in counts],
    }
    return status
