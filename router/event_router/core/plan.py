"""Routing one event: validate it, match the routes, reshape. Pure (no I/O), so the daemon, `event-router
test`, dead-letter replay and the benchmarks share it."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from event_router.api.errors import did_you_mean
from event_router.api.event import Event
from event_router.api.templates import MissingValueError, Template
from event_router.core.model import InputConfig, RouteConfig, RouterConfig
from event_router.core.routing import render_ordering_key
from event_router.core.validation import SchemaRegistry, ValidationResult, passed

#: distinct unknown triggers named in the log; a sender can invent any number, the log says so once
MAX_UNKNOWN_TRIGGERS = 1000


# not frozen: one is made per delivery of every event, and a frozen dataclass's __init__ sets each field
# through object.__setattr__, several times slower
@dataclass(slots=True)
class PlannedDelivery:
    output: str
    route: str
    #: the route's reshaped body, or None to send the event itself
    payload: Any
    reshaped: bool
    #: its ordering key (route's or output's `ordering_key`, rendered), None when unordered
    ordering_key: str | None = None
    #: why its ordering key cannot be rendered (a field it names is missing): the delivery becomes a dead
    #: letter (reason "permanent") when the event is stored, and the event goes on to its other outputs
    key_error: str | None = None


@dataclass(slots=True)
class Plan:
    """What the router would do with one event: the dry run of `event-router test` shows exactly this."""

    event: Event
    validation: ValidationResult
    routes: list[RouteConfig] = field(default_factory=list)
    deliveries: list[PlannedDelivery] = field(default_factory=list)
    #: set when the event goes to the dead letters instead of any output
    dead_letter: tuple[str, str] | None = None
    #: the event's receive span while the pipeline handles it, with telemetry on (`telemetry.EventTrace`;
    #: that module needs the `otel` extra, so it is not named here)
    trace: Any = None


@functools.lru_cache(maxsize=MAX_UNKNOWN_TRIGGERS)
def trigger_hint(trigger: str, schemas: SchemaRegistry) -> str:
    """`did_you_mean` per unknown trigger once, not per event: it compares with every known trigger, and
    runs on the event loop for each event of a sender that keeps sending the same unknown one. Keyed by the
    registry itself (hashed by identity), so a reload's new schemas get new hints."""
    return did_you_mean(trigger, schemas.triggers())


def plan_event(
    event: Event,
    *,
    config: RouterConfig,
    schemas: SchemaRegistry,
    validation: str = "strict",
    unknown_triggers: str = "accept",
) -> Plan:
    """Validate and route one event. Pure: no I/O, so `test` and the daemon share it."""
    if validation == "off":
        result = passed(schemas.schema_for(event.trigger))
    else:
        result = schemas.validate(event.trigger, event.data)
    plan = Plan(event=event, validation=result)
    if not result.valid and validation == "strict":
        plan.dead_letter = ("validation", "; ".join(result.errors))
        return plan
    if result.schema is None and unknown_triggers == "dead-letter":
        hint = trigger_hint(event.trigger, schemas)
        plan.dead_letter = ("unknown_trigger", f"no schema for trigger {event.trigger!r}{hint}")
        return plan
    as_dict = event.to_dict()
    for route in config.routes_for(event.trigger):
        if not route.rest_matcher(as_dict):  # the trigger condition already passed in routes_for
            continue
        plan.routes.append(route)
        payload = route.reshape(as_dict) if route.reshape is not None else None
        ordering = route.ordering
        for output in route.to:
            if ordering and (template := ordering.get(output)) is not None:
                plan.deliveries.append(_ordered(output, route, payload, template, as_dict))
            else:
                plan.deliveries.append(PlannedDelivery(output, route.name, payload, route.reshape is not None))
        if route.stop:
            break
    if not plan.deliveries and config.unmatched == "dead-letter":
        plan.dead_letter = ("no_route", "no route matched")
    return plan


def _ordered(
    output: str, route: RouteConfig, payload: Any, template: Template, event: Mapping[str, Any]
) -> PlannedDelivery:
    """A delivery of `route` to `output` with its ordering key, or with the reason it has none."""
    try:
        key = render_ordering_key(template, event)
    except MissingValueError as exc:
        error = key_error(output, route.name, exc)
        return PlannedDelivery(output, route.name, payload, route.reshape is not None, key_error=error)
    return PlannedDelivery(output, route.name, payload, route.reshape is not None, ordering_key=key)


def key_error(output: str, route: str, exc: MissingValueError) -> str:
    """What a dead letter says of a delivery whose ordering key cannot be rendered."""
    return f"ordering_key of output {output} (route {route!r}): {exc}: cannot be put in order"


def ordering_key_for(config: RouterConfig, output: str, route: str, event: Mapping[str, Any]) -> str | None:
    """The ordering key a delivery of the named route to `output` gets under `config` (None: unordered), for a
    replayed dead letter; `MissingValueError` when it cannot be rendered. A route a reload removed leaves the
    output's `ordering_key`."""
    found = config.route(route)
    if found is not None and output in found.to:
        template = found.ordering.get(output)
    else:
        template = config.outputs[output].ordering_key if output in config.outputs else None
    return None if template is None else render_ordering_key(template, event)


def plan_for_input(event: Event, source: InputConfig | None, *, config: RouterConfig, schemas: SchemaRegistry) -> Plan:
    """`plan_event` under the policies of the input `source` (validation, unknown triggers), or under the
    defaults where there is no such input: a replayed event whose input is gone, a dry run without one."""
    if source is None:
        return plan_event(event, config=config, schemas=schemas)
    return plan_event(
        event,
        config=config,
        schemas=schemas,
        validation=source.validation,
        unknown_triggers=source.unknown_triggers,
    )
