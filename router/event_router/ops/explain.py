"""`event-router explain EVENT.json`: why each route matches an event or not, and what each delivery would be.

Routes are explained in the order the router tries them. A route that does not match names the first of its
conditions, in the order written, that fails, with the value the event has there (for a `$or`, why each
branch fails); one after a matching `stop = true` route is not tried. The event goes through the same plan
as in the router (`plan_for_input`), so what is said about validation, dead letters and deliveries is what
the router would do; the conditions are tested with the routes' own compiled tests (`routing.explain_match`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

import orjson

from event_router.api.event import Event
from event_router.api.templates import MISSING
from event_router.core.model import RouteConfig
from event_router.core.routing import Miss, as_toml, explain_match, parse_match
from event_router.ops.dryrun import EventFileError, dry_deliveries, event_source, events_for_input, wire_event

#: longest value printed in the text form (--json prints everything)
SHOWN: Final = 300


def cmd_explain(args: argparse.Namespace) -> int:
    from event_router.app import load_schemas
    from event_router.config import load_config
    from event_router.core.plan import plan_for_input
    from event_router.plugin_loader import load_plugins

    registry = load_plugins()
    config = load_config(args.config, registry, secrets="skip")  # it sends nothing: no secret needed
    schemas = load_schemas(config, registry)
    try:
        items, is_list, source = events_for_input(args.events, config, args.input)
    except EventFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    reports = []
    for where, item in items:
        trigger, data = wire_event(item, where)
        event = Event(trigger=trigger, data=data, source=event_source(source))
        plan = plan_for_input(event, source, config=config, schemas=schemas)
        as_dict = event.to_dict()
        matched = {route.name for route in plan.routes}
        deliveries = dry_deliveries(plan, config)
        routes: list[dict[str, Any]] = []
        stopped_by: RouteConfig | None = None
        for route in config.routes:
            entry: dict[str, Any] = {"route": route.name, "index": route.index}
            if plan.dead_letter is not None and plan.dead_letter[0] != "no_route":
                entry["outcome"] = "not tried"
                entry["why"] = "the event is a dead letter before routing"
            elif stopped_by is not None:
                entry["outcome"] = "not tried"
                entry["why"] = f'routes[{stopped_by.index}] ("{stopped_by.name}") matched and has stop = true'
            elif route.name in matched:
                entry["outcome"] = "matched"
                entry["stop"] = route.stop
                entry["deliveries"] = [
                    {
                        "output": d.output,
                        "type": d.type,
                        "payload": d.payload,
                        **({"error": d.error} if d.error is not None else dict(d.described)),
                        **({"ordering_key": d.ordering_key} if d.ordering_key is not None else {}),
                        **({"key_error": d.key_error} if d.key_error is not None else {}),
                    }
                    for d in deliveries
                    if d.route == route.name
                ]
                if route.stop:
                    stopped_by = route
            else:
                miss = explain_match(parse_match(route.match), as_dict)
                # the plan and this explanation test the same compiled conditions: they cannot disagree
                assert miss is not None, f"route {route.name!r}: not in the plan, yet its pattern matches"
                entry["outcome"] = "no match"
                entry["failed"] = _miss_json(miss)
            routes.append(entry)
        reports.append(
            {
                "event": where,
                "trigger": event.trigger,
                "input": source.name if source is not None else None,
                "validation": {
                    "valid": plan.validation.valid,
                    "schema": plan.validation.schema,
                    "errors": list(plan.validation.errors),
                },
                "routes": routes,
                "dead_letter": (
                    {"reason": plan.dead_letter[0], "error": plan.dead_letter[1]} if plan.dead_letter else None
                ),
            }
        )
    if args.json:
        sys.stdout.write(orjson.dumps(reports if is_list else reports[0], option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    for number, report in enumerate(reports):
        if number:
            print()
        _print_text(report, config.unmatched)
    return 0


def _miss_json(miss: Miss) -> dict[str, Any]:
    if miss.branches:
        return {"condition": f"match.{miss.where}", "branches": [_miss_json(b) for b in miss.branches]}
    return {
        "condition": f"match.{miss.where}",
        "wants": miss.spec,
        "saw": None if miss.seen is MISSING else miss.seen,
        "missing": miss.seen is MISSING,
    }


def _print_text(report: dict[str, Any], unmatched: str) -> None:
    input_name = report["input"]
    print(f"{report['event']}: {report['trigger']}" + (f' (input "{input_name}")' if input_name else ""))
    validation = report["validation"]
    if validation["schema"] is None:
        print("  validation: no schema knows this trigger")
    elif validation["valid"]:
        print(f"  validation: valid ({validation['schema']})")
    else:
        print(f"  validation: invalid ({validation['schema']}): " + "; ".join(validation["errors"]))
    for entry in report["routes"]:
        head = f'  routes[{entry["index"]}] "{entry["route"]}": '
        if entry["outcome"] == "not tried":
            print(f"{head}not tried: {entry['why']}")
        elif entry["outcome"] == "no match":
            print(f"{head}no match: {_miss_text(entry['failed'])}")
            for line in _branch_lines(entry["failed"], "      "):
                print(line)
        else:
            stop = ", stop = true: no later route is tried" if entry["stop"] else ""
            print(f"{head}matched{stop}")
            for delivery in entry["deliveries"]:
                print(f"    -> {delivery['output']} ({delivery['type']})")
                if "key_error" in delivery:
                    print(f"       a dead letter when stored, its ordering key not rendered: {delivery['key_error']}")
                    continue
                if "error" in delivery:
                    print(f"       cannot build its request, so it would be a dead letter: {delivery['error']}")
                    continue
                for key, value in delivery.items():
                    if key not in ("output", "type", "payload"):
                        print(f"       {key}: {_show(value)}")
                if "body" not in delivery and "line" not in delivery:
                    print(f"       payload: {_show(delivery['payload'])}")
    dead = report["dead_letter"]
    if dead is not None:
        print(f"  dead letter ({dead['reason']}): {dead['error']}")
    elif not any(entry["outcome"] == "matched" for entry in report["routes"]):
        fate = "dropped" if unmatched == "drop" else "a dead letter"
        print(f'  no route matches: {fate} ([router] unmatched = "{unmatched}")')


def _miss_text(failed: dict[str, Any]) -> str:
    if "branches" in failed:
        return f"no branch of {failed['condition']} matches"
    saw = "nothing (the field is missing)" if failed["missing"] else _show(failed["saw"])
    return f"{failed['condition']} = {as_toml(failed['wants'])} does not hold: the event has {saw}"


def _branch_lines(failed: dict[str, Any], indent: str) -> list[str]:
    lines = []
    for branch in failed.get("branches", []):
        lines.append(f"{indent}{_miss_text(branch)}")
        lines += _branch_lines(branch, indent + "  ")
    return lines


def _show(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "... (--json shows all)"
