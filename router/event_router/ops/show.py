"""How the spool and its dead letters are shown to people: `status`, `dlq list|show`, the attempts `trace` and
`dlq show` print, and the tables of `plugins` and `schemas`. What they mean and do (replay) is the core's
(`event_router.core.deadletters`)."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import Any

import orjson

from event_router.core.model import RouterConfig
from event_router.core.spool import Attempt, DeadLetter, OutputBacklog, OutputState, Spool


def iso_time(timestamp: float) -> str:
    """Unix time as people read it in `dlq` and `status`: UTC, to the second, ISO 8601."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def iso_time_ms(timestamp: float) -> str:
    """Unix time to the millisecond (an attempt's start: retries may come within a second), UTC, ISO 8601."""
    seconds = int(timestamp)
    millis = min(999, round((timestamp - seconds) * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def attempt_json(attempt: Attempt) -> dict[str, Any]:
    """One attempt as `trace --json` and `dlq show` print it."""
    return {
        "attempt": attempt.number,
        "at": iso_time_ms(attempt.at),
        "duration_seconds": round(attempt.duration, 4),
        "outcome": attempt.outcome,
        "status": attempt.status,
        "error": attempt.error,
        "answer": attempt.answer,
    }


def attempts_json(kept: Sequence[Attempt], made: int) -> dict[str, Any]:
    """A delivery's attempts kept, and how many of `made` were forgotten between the first and the last
    (`Spool`: the first ATTEMPTS_FIRST and the last ATTEMPTS_LAST are kept)."""
    return {"history": [attempt_json(a) for a in kept], "attempts_not_kept": max(0, made - len(kept))}


def attempt_lines(kept: Sequence[Attempt], made: int, indent: str = "  ") -> list[str]:
    """A delivery's attempts kept, one line each (and the start of the answer below a failed one), with a line
    where attempts are not kept (between the first and the last; or made before the spool recorded them)."""
    lines: list[str] = []
    previous = 0
    for attempt in kept:
        if attempt.number > previous + 1:
            lines.append(f"{indent}... attempts {previous + 1} to {attempt.number - 1} not kept")
        previous = attempt.number
        status = "-" if attempt.status is None else str(attempt.status)
        line = (
            f"{indent}#{attempt.number}  {iso_time_ms(attempt.at)}  {attempt.duration:7.3f}s  "
            f"{attempt.outcome:<17}  {status:>3}"
        )
        if attempt.error:
            line += f"  {one_line(attempt.error)}"
        lines.append(line)
        if attempt.answer and attempt.outcome != "delivered":
            lines.append(f"{indent}    answer: {one_line(attempt.answer, 200)}")
    if made > previous:
        lines.append(f"{indent}... attempts {previous + 1} to {made} not kept")
    return lines


def dead_letter_json(
    dl: DeadLetter, *, full: bool = False, attempts: Sequence[Attempt] | None = None
) -> dict[str, Any]:
    """A dead letter as `dlq list --json` (and, `full`, with its event and payload, `dlq show`) prints it;
    `attempts`: its delivery's attempts the spool kept (`dlq show`)."""
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
    if attempts is not None:
        out.update(attempts_json(attempts, dl.attempts))
    return out


def spool_status(config: RouterConfig, spool: Spool) -> dict[str, Any]:
    """What `event-router status` prints, from `spool` (opened to read).

    Keys are stable snake_case names; outputs are keyed by their name in router.toml. Every configured
    output is listed, and any output the spool still holds deliveries or dead letters for.
    """
    summary = spool.status()
    states = spool.output_states()
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
    names = sorted(set(config.outputs) | set(summary.backlogs) | set(dead_per_output) | set(states))
    for name in names:
        backlog = summary.backlogs.get(name, OutputBacklog(0, 0))
        due_in = backlog.next_retry_in
        state = states.get(name, OutputState(name))
        configured = config.outputs.get(name)
        breaker = "off" if configured is None or configured.breaker is None else "closed"
        if state.breaker_open_since is not None:  # recorded open by a router, and not lapsed
            breaker = "open"
        oldest = backlog.oldest_pending_age
        status["outputs"][name] = {
            "configured": name in config.outputs,
            "pending": backlog.pending,
            # how long its oldest pending delivery has waited: a backlog that does not move shows here
            "oldest_pending_age_seconds": None if oldest is None else round(oldest, 3),
            # past it, new deliveries for the output are parked as dead letters (output_backlog_full)
            "max_pending": config.outputs[name].max_pending if name in config.outputs else None,
            "retrying": backlog.retrying,
            "next_retry_at": None if due_in is None else iso_time(wall + due_in),
            "next_retry_in_seconds": None if due_in is None else round(max(0.0, due_in), 3),
            "next_retry_attempt": None if due_in is None else backlog.next_retry_failures + 1,
            "last_error": backlog.last_error,
            "dead_letters": dead_per_output.get(name, 0),
            # paused by an operator (`event-router output pause`): no router starts its deliveries
            "paused": state.paused,
            "paused_at": iso_time(state.pause_changed_at) if state.paused and state.pause_changed_at else None,
            "paused_by": state.pause_changed_by if state.paused else None,
            # off (not configured), closed, or open: a router holds its pending deliveries for the cool-down
            "breaker": breaker,
            "breaker_opened_at": None if state.breaker_open_since is None else iso_time(state.breaker_open_since),
            "breaker_router": state.breaker_router,
            "breaker_error": state.breaker_error,
        }
    status["dead_letters"] = {
        "total": sum(dead.count for dead in summary.dead_letters),
        "counts": [{"output": d.output, "reason": d.reason, "count": d.count} for d in summary.dead_letters],
    }
    return status


#: seconds `status` waits for the router's /readyz: a router that answers does so at once
READYZ_TIMEOUT = 3.0


def router_readiness(config: RouterConfig) -> dict[str, Any]:
    """The inputs of the router that runs `config`, and whether each is ready and why not, as its admin
    endpoint's `/readyz` answers (open: no token needed), for `status`.

    The spool does not know the inputs (they are the running router's, and with a shared PostgreSQL spool
    each router has its own): without `[router.admin]`, or with no router answering there, `inputs` is
    None and `error` says why they are unknown.
    """
    import http.client

    from event_router.api.listen import format_listen

    report: dict[str, Any] = {"admin": None, "ready": None, "inputs": None, "spool_writable": None, "error": None}
    if config.admin_listen is None:
        report["error"] = (
            "[router.admin] is not configured: only a running router knows its inputs and whether they "
            "consume (its /readyz), and this file gives no address to ask it"
        )
        return report
    host, port = config.admin_listen
    where = report["admin"] = format_listen(host, port)
    connection = http.client.HTTPConnection(host, port, timeout=READYZ_TIMEOUT)
    try:
        connection.request("GET", "/readyz")
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        report["error"] = f"no router answers on {where} ({exc}): not running?"
        return report
    finally:
        connection.close()
    try:
        answer = orjson.loads(body)
        ready, inputs = answer["ready"], answer["inputs"]
        assert isinstance(inputs, dict)
    except (orjson.JSONDecodeError, KeyError, TypeError, AssertionError):
        report["error"] = f"what answers on {where} is no event-router /readyz (HTTP {response.status})"
        return report
    reasons = answer.get("reasons") or {}
    report["ready"] = bool(ready)
    report["inputs"] = {
        name: {"ready": bool(up), "reason": None if up else reasons.get(name)} for name, up in sorted(inputs.items())
    }
    spool = answer.get("spool") or {}
    report["spool_writable"] = spool.get("writable")
    if not spool.get("writable", True):
        report["spool_error"] = spool.get("error")
    if set(inputs) != set(config.inputs):
        # /readyz is open and names no router.toml: names that differ are the one sign of another router
        report["error"] = (
            f"the router on {where} has inputs {', '.join(sorted(inputs)) or 'none'}, but {config.path.name} "
            f"configures {', '.join(sorted(config.inputs)) or 'none'}: another router listens there, or this "
            "one runs an older version of the file (reload it)"
        )
    return report


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Collection[int] = ()) -> list[str]:
    """Lines of an aligned text table: each column as wide as its widest cell, the last one not padded.
    Columns whose index is in `right` (numbers) are right-aligned."""
    cells = [[str(h) for h in headers], *[["-" if v is None or v == "" else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    last = len(headers) - 1

    def aligned(i: int, value: str) -> str:
        if i in right:
            return value.rjust(widths[i])
        return value if i == last else value.ljust(widths[i])

    return ["  ".join(aligned(i, value) for i, value in enumerate(row)).rstrip() for row in cells]


def age_text(seconds: float) -> str:
    """How long something has waited, as `status` shows it: `42s`, `7m12s`, `3h05m`, `2d04h`."""
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def one_line(text: str | None, width: int = 100) -> str:
    """An error message as one table cell: whitespace runs (newlines too) as one space, cut at `width`."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."
