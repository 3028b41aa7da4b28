"""`event-router trace EVENT_ID`: one event's whole life as the spool knows it (`Spool.event_history`): how it
was received, what validation said, the routes it took, each delivery with every attempt kept, the next retry,
and how it ended (delivered, dead letter). A delivery that was dead-lettered and then replayed (`dlq replay`,
the console) stays, with when and by whom, before the delivery it was replayed as.

It reads the spool only (opened readonly, like `status`), beside running routers. It prints what the event
was received with (input, `received_at`, `meta`), never its `data`: `dlq show` prints a dead letter's whole
event, the kept event itself is for `replay`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from event_router.core.model import RouterConfig
from event_router.core.spool import DeliveryHistory, EventHistory, OutputState, Replay
from event_router.ops.dlq import open_spool
from event_router.ops.show import attempt_lines, attempts_json, dead_letter_json, iso_time, one_line

__all__ = ["add_trace_parser", "run_trace", "trace_json"]

#: dead letter reasons given before any route: the event never had a delivery
_INTAKE_REASONS = {
    "validation": "invalid",
    "unknown_trigger": "unknown trigger",
    "no_route": "no route matched",
    "undecodable": "not decodable",
}


def add_trace_parser(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "trace",
        help="an event's whole life: received, validation, routes, each delivery with every attempt, dead letters",
        description="Print what the spool knows of one event: how it was received (input, meta), what validation "
        "said, the routes it took, each delivery with every attempt kept (time, duration, outcome, HTTP status or "
        "error, the start of the answer), the next retry, and how it ended (delivered, or its dead letter). "
        "Reads the spool only, beside running routers; prints no event data.",
        epilog="exit status: 0 found; 1 the spool knows nothing of the event (never stored, or delivered and "
        "forgotten: [router] retention off), or the spool cannot be read; 2 EVENT_ID is not an event id (a UUID).",
    )
    config_arg(p)
    p.add_argument("event_id", metavar="EVENT_ID", help="the event's id, a UUID (the Idempotency-Key outputs send)")
    p.add_argument("--json", action="store_true")


def event_id(text: str) -> str | None:
    """`text` as the spool stores an event id, or None when it cannot be one. Every id the router gives is
    a UUID (`new_event_id`, version 7), stored in its canonical form (lowercase, with hyphens): one pasted
    in upper case, without hyphens or in braces is the same id."""
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        return None


def _not_an_id(text: str) -> str:
    hint = f"; a dead letter's id? event-router dlq show {text.strip()}" if text.strip().isdigit() else ""
    return (
        f"{text!r} is not an event id: event ids are UUIDs, like 0193a6f2-1c4e-7b21-9d3a-52e8a1f0c7d4 (the "
        f'webhook answers it as "id"; outputs send it as Idempotency-Key; log lines and dlq list --json carry it){hint}'
    )


def run_trace(args: argparse.Namespace, config: RouterConfig) -> int:
    wanted = event_id(args.event_id)
    if wanted is None:
        print(f"error: {_not_an_id(args.event_id)}", file=sys.stderr)
        return 2
    spool = open_spool(config, "readonly")
    try:
        history = spool.event_history(wanted)
        states = spool.output_states() if history is not None and history.pending else {}
    finally:
        spool.close()
    if history is None:
        print(f"error: event {wanted}: {_unknown(config)}", file=sys.stderr)
        return 1
    trace = trace_json(history, config, states)
    if args.json:
        sys.stdout.write(orjson.dumps(trace, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print("\n".join(trace_lines(trace, history)))
    return 0


def _unknown(config: RouterConfig) -> str:
    if config.retention <= 0:
        return (
            "the spool knows nothing of it: not pending, no dead letter, and not kept (retention off: a delivered "
            "event is forgotten with its last delivery; [router] retention keeps them)"
        )
    return (
        f"the spool knows nothing of it: not pending, no dead letter, and not kept ([router] retention keeps "
        f"events received in the last {_duration(config.retention)}); or it was never stored"
    )


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def trace_json(history: EventHistory, config: RouterConfig, states: Mapping[str, OutputState]) -> dict[str, Any]:
    """What `trace --json` prints (`trace_lines` says it in lines): stable snake_case keys, times UTC ISO 8601."""
    event = _event(history)
    source = event.get("source") if isinstance(event.get("source"), str) else None
    meta = event.get("meta") if isinstance(event.get("meta"), dict) else {}
    wall = time.time()
    deliveries = [_delivery(d, states, wall) for d in history.deliveries]
    moved = {d.dead_letter for d in history.deliveries if d.dead_letter is not None}
    kept_until = None
    if history.received is not None and config.retention > 0:
        kept_until = iso_time(history.received + config.retention)
    return {
        "event_id": history.event_id,
        "trigger": history.trigger,
        "input": source,
        "received_at": event.get("received_at"),
        "meta": meta,
        "validation": _validation(history, config, source),
        "stored": _stored(history, config),
        "kept_until": kept_until,
        # the routes its deliveries were made by, in the order they were stored (the routes of now may differ)
        "routes": list(dict.fromkeys(d.route for d in history.deliveries)),
        "deliveries": deliveries,
        # dead letters of the event that are no delivery's (invalid, unrouted, parked at a full backlog...)
        "dead_letters": [dead_letter_json(dl) for dl in history.dead_letters if dl.dlid not in moved],
        # every dead letter of it that was replayed, oldest first (a delivery's is also that delivery's `replay`)
        "replays": [_replay(r) for r in history.replays],
        "outcome": _outcome(history),
    }


def _event(history: EventHistory) -> dict[str, Any]:
    if history.body is None:
        return {}
    try:
        event = orjson.loads(history.body)
    except orjson.JSONDecodeError:
        return {}
    return event if isinstance(event, dict) else {}


def _validation(history: EventHistory, config: RouterConfig, source: str | None) -> dict[str, Any]:
    """What can be said of the event's validation: the spool records no validation result, so it is read from
    where the event went (a dead letter of an invalid event, or stored) and the input's policy in router.toml."""
    for dl in history.dead_letters:
        if dl.reason in ("validation", "unknown_trigger"):
            return {"recorded": True, "valid": False, "said": f"{_INTAKE_REASONS[dl.reason]}: {dl.error}"}
    policy = config.inputs[source].validation if source is not None and source in config.inputs else None
    out: dict[str, Any] = {"recorded": False, "policy": policy}
    if not history.stored and not history.deliveries:
        out["said"] = "not stored: see its dead letters"
    elif policy == "strict":
        out["said"] = (
            f'accepted, so valid: input {source} validates strictly (validation = "strict" in router.toml now), and '
            "an invalid event would be a dead letter, not stored"
        )
    elif policy == "warn":
        out["said"] = (
            f'not recorded: input {source} has validation = "warn" (in router.toml now), which stores valid and '
            "invalid events alike and logs the errors"
        )
    elif policy == "off":
        out["said"] = f'not validated: input {source} has validation = "off" (in router.toml now)'
    else:
        out["said"] = f"not recorded: no input {source} in router.toml now (events the router makes are not validated)"
    return out


def _stored(history: EventHistory, config: RouterConfig) -> str:
    if history.pending:
        return "pending"
    if history.stored:
        return "kept"
    return "not kept (retention off)" if config.retention <= 0 else "not kept (pruned, or stored without retention)"


def _outcome(history: EventHistory) -> str:
    """pending (a delivery waits), dead_lettered (one became a dead letter, or the event did before any
    delivery), delivered (every delivery), or kept (stored, no delivery recorded: made before the spool
    recorded attempts, or routed nowhere by a replay)."""
    if history.pending:
        return "pending"
    if history.dead_letters or any(d.state == "dead_letter" for d in history.deliveries):
        return "dead_lettered"
    if history.deliveries:
        return "delivered"
    return "kept"


def _replay(replay: Replay) -> dict[str, Any]:
    return {
        "dead_letter": replay.dead_letter,
        "output": replay.output,
        "route": replay.route,
        "reason": replay.reason,
        "error": replay.error,
        "attempts": replay.attempts,
        "dead_lettered_at": iso_time(replay.created_at),
        "replayed_at": iso_time(replay.replayed_at),
        "replayed_by": replay.replayed_by,
        "replayed_as": replay.replayed_as,
    }


def _delivery(delivery: DeliveryHistory, states: Mapping[str, OutputState], wall: float) -> dict[str, Any]:
    due_in = delivery.next_attempt_in
    # behind an earlier delivery of its ordering key it has no due time (BLOCKED): it is due once that one is
    # delivered or dead-lettered
    behind_key = due_in is not None and math.isinf(due_in)
    if behind_key:
        due_in = None
    out: dict[str, Any] = {
        "id": delivery.delivery,
        "output": delivery.output,
        "route": delivery.route,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "next_attempt_at": None if due_in is None else iso_time(wall + due_in),
        "next_attempt_in_seconds": None if due_in is None else round(max(0.0, due_in), 3),
        "last_error": delivery.last_error,
        "dead_letter": delivery.dead_letter,
    }
    if behind_key:
        out["waiting_for_ordering_key"] = True
    if delivery.replay is not None:
        out["replay"] = _replay(delivery.replay)
    if delivery.state == "pending":
        state = states.get(delivery.output, OutputState(delivery.output))
        held = [flag for flag, on in (("paused", state.paused), ("breaker open", state.breaker_open_since)) if on]
        out["output_state"] = ", ".join(held) or "active"
    out.update(attempts_json(delivery.history, delivery.attempts))
    return out


def trace_lines(trace: Mapping[str, Any], history: EventHistory) -> list[str]:
    """`trace`'s text: the event, then each delivery and its attempts, then the dead letters that are no
    delivery's, then the outcome."""
    lines = [f"event {trace['event_id']}  {trace['trigger'] or '-'}"]

    def field(label: str, value: str) -> None:
        lines.append(f"  {label:<10}  {value}")

    field("received", f"{trace['received_at'] or '-'} on input {trace['input'] or '-'}")
    if trace["meta"]:
        field("meta", one_line(orjson.dumps(trace["meta"]).decode(), 200))
    field("validation", trace["validation"]["said"])
    field("stored", trace["stored"] + (f", kept until {trace['kept_until']}" if trace["kept_until"] else ""))
    by_id = {d.delivery: d for d in history.deliveries}
    field("routes", ", ".join(f'"{r}"' for r in trace["routes"]) or "-")
    for delivery in trace["deliveries"]:
        lines.append("")
        head = f'delivery {delivery["id"]}: route "{delivery["route"]}" -> output {delivery["output"]}: '
        lines.append(head + _delivery_state(delivery))
        kept = by_id[delivery["id"]]
        lines += attempt_lines(kept.history, kept.attempts)
    for dl in trace["dead_letters"]:
        lines.append("")
        where = f" at output {dl['output']}" if dl["output"] else ""
        lines.append(f"dead letter {dl['id']} ({dl['reason']}{where}, {dl['created_at']}): {one_line(dl['error'])}")
    shown = {d["dead_letter"] for d in trace["deliveries"] if d["state"] == "replayed"}
    for replay in trace["replays"]:
        if replay["dead_letter"] in shown:
            continue
        # one that was no delivery's (invalid, unrouted, parked): no attempts, only its replay
        lines.append("")
        where = f" at output {replay['output']}" if replay["output"] else ""
        lines.append(
            f"dead letter {replay['dead_letter']} ({replay['reason']}{where}, {replay['dead_lettered_at']}): "
            f"{one_line(replay['error'] or '-')}"
        )
        lines.append(f"  {_replayed(replay)}")
    lines.append("")
    lines.append(f"outcome: {_outcome_line(trace)}")
    return lines


def _delivery_state(delivery: Mapping[str, Any]) -> str:
    made = delivery["attempts"]
    tries = f"{made} attempt{'s' if made != 1 else ''}"
    if delivery["state"] == "delivered":
        return f"delivered ({tries})"
    if delivery["state"] == "replayed":
        replay = delivery.get("replay")
        if replay is None:
            return f"dead letter {delivery['dead_letter']} ({tries}), replayed"
        return f"dead letter {delivery['dead_letter']} ({tries}, {replay['dead_lettered_at']}), {_replayed(replay)}"
    if delivery["state"] == "dead_letter":
        dlid = delivery["dead_letter"]
        return f"dead letter {dlid} ({tries})" if dlid is not None else f"failed for good ({tries})"
    held = "" if delivery["output_state"] == "active" else f"; output {delivery['output_state']}"
    if delivery.get("waiting_for_ordering_key"):
        return f"pending ({tries}), waiting behind an earlier delivery of its ordering key{held}"
    wait = delivery["next_attempt_in_seconds"]
    when = f"in {wait:.0f}s" if wait >= 0.5 else "due now"
    return f"pending ({tries}), next attempt {delivery['next_attempt_at']} ({when}, attempt {made + 1}){held}"


def _replayed(replay: Mapping[str, Any]) -> str:
    by = f" by {replay['replayed_by']}" if replay["replayed_by"] else ""
    return f"replayed {replay['replayed_at']}{by} as delivery {replay['replayed_as']}"


def _outcome_line(trace: Mapping[str, Any]) -> str:
    outcome = trace["outcome"]
    deliveries = trace["deliveries"]
    if outcome == "delivered":
        # a replayed delivery's output is the one its replay delivered to
        return f"delivered ({', '.join(dict.fromkeys(d['output'] for d in deliveries if d['state'] == 'delivered'))})"
    if outcome == "pending":
        waiting = [d["output"] for d in deliveries if d["state"] == "pending"]
        return f"pending ({', '.join(waiting)})"
    if outcome == "dead_lettered":
        # the dead letters there are now: a replayed one is gone (its delivery's state is `replayed`)
        ids = [d["dead_letter"] for d in deliveries if d["dead_letter"] is not None and d["state"] == "dead_letter"]
        ids += [dl["id"] for dl in trace["dead_letters"]]
        if not ids:
            return "dead-lettered"
        # the command to paste, with the ids themselves (`dlq show` takes several)
        ids = sorted(set(ids))
        letters = "dead letter" if len(ids) == 1 else "dead letters"
        return f"dead-lettered ({letters} {', '.join(map(str, ids))}: event-router dlq show {' '.join(map(str, ids))})"
    return "kept; no delivery of it recorded (delivered before the spool recorded attempts, or routed nowhere)"
