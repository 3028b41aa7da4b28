"""Routing one event: validate it, match the routes, reshape. Pure (no I/O), so the daemon, `event-router
test`, dead-letter replay and the benchmarks share it."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from event_router.api.errors import did_you_mean
from event_router.api.event import Event
from event_router.core.model import InputConfig, RouteConfig, RouterConfig
from event_router.core.validation import SchemaRegistry, ValidationResult

#: distinct unknown triggers named in the log; a sender can invent any number, the log says so once
MAX_UNKNOWN_TRIGGERS = 1000


@dataclass(frozen=True, slots=True)
class PlannedDelivery:
    output: str
    route: str
    #: the route's reshaped body, or None to send the event itself
    payload: Any
    reshaped: bool


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
    result = (
        ValidationResult(valid=True, errors=(), schema=schemas.schema_for(event.trigger))
        if validation == "off"
        else schemas.validate(event.trigger, event.data)
    )
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
        for output in route.to:
            plan.deliveries.append(PlannedDelivery(output, route.name, payload, route.reshape is not None))
        if route.stop:
            break
    if not plan.deliveries and config.unmatched == "dead-letter":
        plan.dead_letter = ("no_route", "no route matched")
    return plan


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
