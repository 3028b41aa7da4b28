"""What `test`, `test --expect` and `explain` share: reading events as the Connector sends them, and what each
delivery of a plan would be. Nothing is sent: outputs only describe (`Output.describe`) what they would do."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from event_router.api.errors import RouterError
from event_router.api.plugin import Delivery
from event_router.core.model import InputConfig, RouterConfig
from event_router.core.plan import Plan

#: what an event file holds, for messages
EVENT_FORMS = (
    '{"trigger": "...", "data": ...} (as the Connector\'s webhook posts it) nor {"namespace": "...", "data": ...}'
)


class EventFileError(ValueError):
    """An events file cannot be read as events; the message names the file (and the index in a list)."""


def read_events(path: Path) -> tuple[list[tuple[str, Mapping[str, Any]]], bool]:
    """The events in a JSON file (one event, or a list of them), each with where it is (`FILE`, `FILE[2]`:
    as jq addresses it), and whether the file holds a list. Each is checked with `wire_event`."""
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise EventFileError(f"cannot read {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise EventFileError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(document, list):
        items = [(f"{path}[{index}]", item) for index, item in enumerate(document)]
        if not items:
            raise EventFileError(f"{path} is an empty list: no event to look at")
    else:
        items = [(str(path), document)]
    for where, item in items:
        wire_event(item, where)
    return items, isinstance(document, list)


def events_for_input(
    path: Path, config: RouterConfig, input_name: str | None
) -> tuple[list[tuple[str, Mapping[str, Any]]], bool, InputConfig | None]:
    """What `test` and `explain` run: the events file's items (`read_events`), whether it held a list, and
    the input whose policy applies (`input_name`, by default the first input; None when there is none).
    EventFileError says why the file or the input cannot be used."""
    items, is_list = read_events(path)
    name = input_name or next(iter(config.inputs), None)
    if name is not None and name not in config.inputs:
        raise EventFileError(f"no input named {name!r} (inputs: {', '.join(config.inputs)})")
    return items, is_list, config.inputs[name] if name is not None else None


def wire_event(item: Any, where: str) -> tuple[str, Any]:
    """(trigger, data) of an event in one of the Connector's wire forms: the webhook's `{"trigger", "data"}`
    or the documented envelope's `{"namespace", "data"}`. A missing `data` is an event without data (None),
    as the webhook input reads it; other keys are ignored."""
    if not isinstance(item, Mapping):
        raise EventFileError(f"{where} is not {EVENT_FORMS}")
    trigger, namespace = item.get("trigger"), item.get("namespace")
    if trigger is not None and namespace is not None and trigger != namespace:
        raise EventFileError(f"{where} names two events: trigger {trigger!r} and namespace {namespace!r}")
    name = trigger if trigger is not None else namespace
    if not isinstance(name, str) or not name:
        raise EventFileError(f"{where} is not {EVENT_FORMS}: it names no event")
    return name, item.get("data")


def event_source(source: InputConfig | None) -> str:
    """The `source` an input's events carry: its name, or the name of the input it covers (gap recovery
    rebuilds events as that input would have received them)."""
    if source is None:
        return "test"
    return source.plugin.covers() or source.name


@dataclass(frozen=True, slots=True)
class DryDelivery:
    """One delivery of a plan, as the router would store it and the output would send it."""

    output: str
    type: str
    route: str
    #: the payload exactly as stored for the output (JSON): the route's reshaped body, or the event itself
    payload: Any
    #: what the output says it would send (`Output.describe`); empty when it could not say
    described: Mapping[str, Any]
    #: why the output could not build its request: the delivery would be a dead letter
    error: str | None
    #: its ordering key (`PlannedDelivery.ordering_key`), None when unordered
    ordering_key: str | None = None
    #: why its ordering key cannot be rendered: the delivery would be a dead letter when stored
    key_error: str | None = None


def dry_deliveries(plan: Plan, config: RouterConfig) -> list[DryDelivery]:
    """Each delivery of `plan` as the router would store it (its payload goes through JSON, as in the spool)
    and as its output would send it."""
    event = plan.event
    found = []
    for planned in plan.deliveries:
        output = config.outputs[planned.output]
        route = config.route(planned.route)
        assert route is not None  # the plan was made from these very routes
        payload = orjson.loads(orjson.dumps(planned.payload) if planned.reshaped else event.to_json())
        delivery = Delivery(
            id=0,
            event=event,
            payload=planned.payload if planned.reshaped else event.to_dict(),
            route=planned.route,
            attempt=1,
            route_options=route.options,
            reshaped=planned.reshaped,
        )
        error = None
        try:
            described = masked(output.plugin.describe(delivery))
        except RouterError as exc:  # the output would fail the delivery the same way: a dead letter
            described, error = {}, str(exc)
        found.append(
            DryDelivery(
                planned.output,
                output.type,
                planned.route,
                payload,
                described,
                error,
                planned.ordering_key,
                planned.key_error,
            )
        )
    return found


def masked(value: Any) -> Any:
    """`value` with every unresolved secret's stand-in shown as `***`: an output's dry-run description
    should show none of its secrets, and a placeholder must not pass for a configured value."""
    from event_router.api.secrets import MASK, Unresolved

    if isinstance(value, Unresolved):
        return MASK
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v) for v in value]
    return value
