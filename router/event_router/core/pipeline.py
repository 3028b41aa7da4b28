"""From an input's events to stored deliveries: validate, route, reshape, store, hand to the workers."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from event_router.api.errors import SpoolFull
from event_router.api.event import Event
from event_router.api.plugin import SubmitResult
from event_router.api.throttle import LogThrottle
from event_router.core.announced import announced_key, key_cutoff
from event_router.core.delivery import OutputWorker
from event_router.core.model import InputConfig, RouterConfig
from event_router.core.plan import MAX_UNKNOWN_TRIGGERS, Plan, PlannedDelivery, plan_event, trigger_hint
from event_router.core.spool import (
    Announcement,
    NewDelivery,
    Parked,
    Refused,
    SeenMessage,
    Spool,
    StoreDeadLetter,
    StoreEvent,
)
from event_router.core.stats import Stats
from event_router.core.tap import Tap
from event_router.core.validation import SchemaRegistry

if TYPE_CHECKING:  # imported only with `[router.telemetry]`: it needs the `otel` extra
    from event_router.core.telemetry import EventTrace, Telemetry

log = logging.getLogger("event_router.core.pipeline")

#: how often (seconds) the spool is told to forget announced keys older than `announced_retention`
FORGET_INTERVAL = 600.0


@dataclass(frozen=True, slots=True)
class InternalSource:
    """Events the router makes itself (an action's result): routed like input events, not validated."""

    name: str = "router"
    validation: str = "off"
    unknown_triggers: str = "accept"


class Pipeline:
    """The core behind every input's `EventSink`."""

    def __init__(self, *, config: RouterConfig, schemas: SchemaRegistry, spool: Spool, stats: Stats):
        self.config = config
        self.schemas = schemas
        self.spool = spool
        self.stats = stats
        self.workers: dict[str, OutputWorker] = {}
        #: unknown triggers already warned about (each once per run), at most MAX_UNKNOWN_TRIGGERS
        self._unknown: set[str] = set()
        #: outputs whose backlog is full: deliveries parked since the last one stored for it
        self._parking: dict[str, int] = {}
        #: one line a minute per output about its parked deliveries
        self._parked_log = LogThrottle()
        #: monotonic time from which a submit has the spool forget announced keys past the retention
        self._next_forget = 0.0
        #: recovery input -> wall time its last look that did not fail ended (a gauge)
        self.last_looks: dict[str, float] = {}
        #: what `event-router tap` streams: every submitted event, and (from the workers) every attempt
        self.tap = Tap()
        #: `[router.telemetry]`: spans of each event and delivery attempt; None (off) unless the app set it
        self.telemetry: Telemetry | None = None

    def sink_for(self, input_config: InputConfig) -> InputSink:
        return InputSink(self, input_config)

    async def submit(self, input_config: InputConfig | InternalSource, events: Sequence[Event]) -> list[SubmitResult]:
        config = self.config  # one config for the whole batch, even if a reload swaps it meanwhile
        telemetry = self.telemetry
        # with telemetry on: each event's receive span, its context written into the event's meta to be stored
        traces: Sequence[EventTrace] = () if telemetry is None else telemetry.received(input_config.name, events)
        # a failure ends the receive spans (as errors); with nothing raised the try costs nothing (3.11's
        # zero-cost exceptions), so with telemetry off the batch pays only the `telemetry is None` tests
        try:
            if telemetry is None:
                plans = [
                    plan_event(
                        e,
                        config=config,
                        schemas=self.schemas,
                        validation=input_config.validation,
                        unknown_triggers=input_config.unknown_triggers,
                    )
                    for e in events
                ]
            else:
                planner = partial(
                    plan_event,
                    config=config,
                    schemas=self.schemas,
                    validation=input_config.validation,
                    unknown_triggers=input_config.unknown_triggers,
                )
                plans = telemetry.route(traces, events, planner)
            items: list[StoreEvent | StoreDeadLetter] = []
            stored_plans: list[Plan] = []
            # with retention on, the spool keeps each event after its deliveries, by the time it was received
            received = time.time() if config.retention > 0 else None
            for plan in plans:
                item = _store_item(plan, input_config.name, received)
                plan.event.raw = None  # stored (or dead-lettered with it): no need to hold the bytes
                if item is not None:
                    items.append(item)
                    stored_plans.append(plan)
            new_events = sum(isinstance(i, StoreEvent) for i in items)
            if new_events and self.spool.depth + new_events > config.max_pending_events:
                new_events = self._adding(items, config)
            if new_events and self.spool.depth + new_events > config.max_pending_events:
                self.stats.incr("spool_full_rejections", input=input_config.name)
                raise SpoolFull(self.spool.depth, config.max_pending_events)
            if telemetry is not None:
                telemetry.storing(stored_plans)
            stored = await self.spool.store(items, config.backlog_limits) if items else []
            if telemetry is not None:
                telemetry.stored(stored_plans)
            if time.monotonic() >= self._next_forget:
                self._next_forget = time.monotonic() + FORGET_INTERVAL
                cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - config.announced_retention))
                await self.spool.forget_announced(key_cutoff(cutoff))
            by_plan = {id(p): (ids, item) for p, ids, item in zip(stored_plans, stored, items, strict=True)}
            results: list[SubmitResult] = []
            counts = _Counts()
            try:
                for plan in plans:
                    ids, item = by_plan.get(id(plan), (None, None))
                    repeat = item is not None and ids is None
                    if plan.validation.schema is None and not isinstance(input_config, InternalSource) and not repeat:
                        self._unknown_trigger(input_config.name, plan)
                    result = self._settle(input_config.name, plan, ids, item, counts)
                    if self.tap.active:
                        self._tap(input_config.name, plan, result)
                    results.append(result)
            finally:
                counts.add_to(self.stats, input_config.name)
        except BaseException as exc:
            if telemetry is not None:
                telemetry.failed(traces, exc)
            raise
        if telemetry is not None:
            telemetry.settled(plans, results)
        return results

    def _tap(self, input_name: str, plan: Plan, result: SubmitResult) -> None:
        self.tap.event(
            input_name,
            plan.event,
            result.status,
            [route.name for route in plan.routes],
            [delivery.output for delivery in plan.deliveries],
            dead_letter=result.dead_letter_id,
            errors=result.errors,
            fixed=self.schemas.fixed_values(plan.event.trigger),
        )

    def _adding(self, items: Sequence[StoreEvent | StoreDeadLetter], config: RouterConfig) -> int:
        """How many of `items` would add a pending event: the spool is near `max_pending_events`, so look closer
        (one indexed read, and the published counts; only then).

        A repeat of a stored message adds nothing: it is answered as one, not refused. Nor does an event
        whose every output is at its `max_pending`: its deliveries are all parked as dead letters, and what
        parks one output's excess must not refuse the inputs. The counts may lag by a commit: the spool
        decides, in its transaction, what is parked."""
        known = self.spool.known_messages([i.seen for i in items if isinstance(i, StoreEvent) and i.seen])
        pending = self.spool.pending_outputs()
        limits = config.backlog_limits
        adding = 0
        for item in items:
            if not isinstance(item, StoreEvent):
                continue
            if item.seen is not None and (item.seen.input, item.seen.message_id) in known:
                continue
            if any(
                d.refused is None and (d.output not in limits or pending.get(d.output, 0) < limits[d.output])
                for d in item.deliveries
            ):
                adding += 1
        return adding

    def _unknown_trigger(self, input_name: str, plan: Plan) -> None:
        """An input's event that no schema knows: often a typo at the sender, so say it, once per trigger.

        Counted by input only (`unknown_triggers_total{input}`): trigger names come from the sender, and a
        label per name would let it grow the metrics without bound. The log names each trigger instead.
        """
        self.stats.incr("unknown_triggers", input=input_name)
        event = plan.event
        trigger = event.trigger
        if trigger in self._unknown or len(self._unknown) > MAX_UNKNOWN_TRIGGERS:
            return
        self._unknown.add(trigger)
        extra = _traced({"input": input_name, "trigger": trigger, "event_id": event.id}, plan)
        if len(self._unknown) > MAX_UNKNOWN_TRIGGERS:
            log.warning(
                f"more than {MAX_UNKNOWN_TRIGGERS} distinct unknown triggers: no more warnings about new ones "
                "(unknown_triggers_total still counts them)",
                extra=extra,
            )
            return
        hint = trigger_hint(trigger, self.schemas)
        log.warning(f"unknown trigger {trigger!r}: no schema knows it{hint}", extra=extra)

    def _settle(
        self,
        input_name: str,
        plan: Plan,
        stored: list[int | Parked | Refused] | int | None,
        item: StoreEvent | StoreDeadLetter | None,
        counts: _Counts,
    ) -> SubmitResult:
        event = plan.event
        if item is not None and stored is None:  # the spool already holds this message: nothing was stored
            self.stats.incr("duplicates", input=input_name)
            if item.seen is not None:
                log.info(
                    "repeated message not stored again",
                    extra=_traced(
                        {"input": input_name, "message_id": item.seen.message_id, "trigger": event.trigger}, plan
                    ),
                )
            else:  # a recovered event whose change an event stored before announced: the common case
                log.debug(
                    "recovered event was announced before; not stored", extra=_traced({"trigger": event.trigger}, plan)
                )
            return SubmitResult(event.id, "duplicate")
        # labelled by schema, not by raw trigger: relationshipEvent.<id> must not explode the series
        trigger_label = plan.validation.schema or "unknown"
        received = counts.received
        received[trigger_label] = received.get(trigger_label, 0) + 1
        if event.meta.get("recovered") is True:  # stored: no event announced it before (the spool checked)
            self.stats.incr("recovered_events", input=input_name, trigger=trigger_label)
        if not plan.validation.valid:
            self.stats.incr("validation_failures", input=input_name, trigger=trigger_label)
        if plan.dead_letter is not None:
            assert isinstance(stored, int)
            reason, error = plan.dead_letter
            self.stats.incr("dead_letters", reason=reason)
            log.warning(
                "event dead-lettered",
                extra=_traced(
                    {
                        "event_id": event.id,
                        "trigger": event.trigger,
                        "input": input_name,
                        "dead_letter": stored,
                        "reason": reason,
                        "error": error,
                    },
                    plan,
                ),
            )
            return SubmitResult(event.id, "dead_lettered", plan.validation.errors, stored)
        if not plan.deliveries:
            self.stats.incr("events_unmatched", trigger=trigger_label)
            log.debug("no route matched", extra=_traced({"event_id": event.id, "trigger": event.trigger}, plan))
            return SubmitResult(event.id, "unrouted", plan.validation.errors)
        assert isinstance(stored, list)
        routed = counts.routed
        for route in plan.routes:
            routed[route.name] = routed.get(route.name, 0) + 1
        assert isinstance(item, StoreEvent)
        for delivery, did, kept in zip(plan.deliveries, stored, item.deliveries, strict=True):
            if isinstance(did, Parked):
                self._parked(input_name, plan, delivery, did)
                continue
            if isinstance(did, Refused):
                self._refused(input_name, plan, delivery, did)
                continue
            if self._parking:
                self._unparked(delivery.output)
            worker = self.workers.get(delivery.output)
            if worker is not None:
                worker.offer_new(did, event, delivery, body=item.body, payload_raw=kept.payload)
        # acknowledged as stored, also with every delivery parked: the dead letters hold it for a replay
        return SubmitResult(event.id, "accepted", plan.validation.errors)

    def _parked(self, input_name: str, plan: Plan, delivery: PlannedDelivery, parked: Parked) -> None:
        """A delivery stored as a dead letter because its output's backlog is full. A dead output parks one per
        event: the metric counts each, the log says the first and then one line a minute per output."""
        output = delivery.output
        event = plan.event
        self.stats.incr("dead_letters", reason="output_backlog_full", output=output)
        self._parking[output] = self._parking.get(output, 0) + 1
        held = self._parked_log.admit(output)
        if held is None:
            return
        log.warning(
            "output backlog full: delivery parked as a dead letter, the event goes on to its other outputs",
            extra=_traced(
                {
                    "event_id": event.id,
                    "trigger": event.trigger,
                    "input": input_name,
                    "route": delivery.route,
                    "output": output,
                    "dead_letter": parked.dead_letter,
                    "reason": "output_backlog_full",
                    "pending": parked.pending,
                    "max_pending": parked.limit,
                    # parked since the last line about this output, not logged
                    "held_back": held,
                    "replay": f"event-router dlq replay --reason output_backlog_full --output {output}",
                },
                plan,
            ),
        )

    def _refused(self, input_name: str, plan: Plan, delivery: PlannedDelivery, refused: Refused) -> None:
        """A delivery stored as a dead letter because its ordering key cannot be rendered (a field the key
        names is missing from this event): no retry can add it. Said once per delivery, as a failed one is."""
        event = plan.event
        self.stats.incr("deliveries", output=delivery.output, outcome="permanent")
        self.stats.incr("dead_letters", reason="permanent", output=delivery.output)
        log.warning(
            "delivery dead-lettered: its ordering key cannot be rendered",
            extra=_traced(
                {
                    "event_id": event.id,
                    "trigger": event.trigger,
                    "input": input_name,
                    "route": delivery.route,
                    "output": delivery.output,
                    "dead_letter": refused.dead_letter,
                    "reason": "permanent",
                    "error": refused.error,
                },
                plan,
            ),
        )

    def _unparked(self, output: str) -> None:
        """`output` takes new deliveries again: say how many were parked while it was full."""
        parked = self._parking.pop(output, None)
        if parked is None:
            return
        log.warning(
            "output backlog below its limit again: new deliveries are stored for it; the ones parked meanwhile "
            "wait in the dead letters",
            extra={
                "output": output,
                "parked": parked,
                "replay": f"event-router dlq replay --reason output_backlog_full --output {output}",
            },
        )

    async def reject(
        self, input_name: str, raw: bytes, reason: str, *, trigger: str | None, meta: Mapping[str, Any]
    ) -> int:
        body = orjson.dumps({"raw": raw.decode("utf-8", "backslashreplace"), "meta": dict(meta), "source": input_name})
        item = StoreDeadLetter(reason="undecodable", error=reason, body=body, trigger=trigger, source=input_name)
        (dlid,) = await self.spool.store([item])
        assert isinstance(dlid, int)
        self.stats.incr("dead_letters", reason="undecodable")
        log.warning(
            "input dead-lettered",
            extra={
                "input": input_name,
                "trigger": trigger,
                "dead_letter": dlid,
                "reason": "undecodable",
                "error": reason,
            },
        )
        if self.tap.active:
            self.tap.undecodable(input_name, trigger, reason, dlid)
        return dlid


class _Counts:
    """The counts of a submit's events that every event adds to, added to the metrics once per submit: a
    series lookup and its lock per label set, not per event."""

    __slots__ = ("received", "routed")

    def __init__(self) -> None:
        #: `events_received` by trigger label
        self.received: dict[str, int] = {}
        #: `events_routed` by route
        self.routed: dict[str, int] = {}

    def add_to(self, stats: Stats, input_name: str) -> None:
        for trigger, count in self.received.items():
            stats.incr("events_received", count, input=input_name, trigger=trigger)
        for route, count in self.routed.items():
            stats.incr("events_routed", count, route=route)


def _traced(extra: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """A log line's fields about `plan`'s event, with its `trace_id` while telemetry is on."""
    if plan.trace is not None:
        extra["trace_id"] = plan.trace.trace_id
    return extra


def _store_item(plan: Plan, input_name: str, received: float | None = None) -> StoreEvent | StoreDeadLetter | None:
    event = plan.event
    message = event.message
    seen = None if message is None else SeenMessage(input_name, message.id, message.until)
    key = announced_key(event.trigger, event.data)
    announced = None if key is None else Announcement(key, claim=event.recovered)
    try:
        body = event.to_json()
        payloads = [orjson.dumps(d.payload) if d.reshaped else None for d in plan.deliveries]
    except TypeError as exc:
        # orjson parses 1,024 levels of nesting but writes only 254: keep the input's bytes instead. The
        # reason says which limit it was (a plugin may also hand over text no JSON can hold)
        cause = "data nests too deeply" if "recursion" in str(exc).lower() else "a value is not valid UTF-8 text"
        reason = f"event cannot be stored as JSON ({exc}): {cause}"
        plan.dead_letter = ("undecodable", reason)
        raw = (event.raw or b"").decode("utf-8", "backslashreplace")
        body = orjson.dumps({"raw": raw, "trigger": event.trigger, "source": event.source, "id": event.id})
        return StoreDeadLetter("undecodable", reason, body, event.id, event.trigger, event.source, seen, announced)
    if plan.dead_letter is not None:
        reason, error = plan.dead_letter
        return StoreDeadLetter(
            reason=reason,  # type: ignore[arg-type]
            error=error,
            body=body,
            event_id=event.id,
            trigger=event.trigger,
            source=event.source,
            seen=seen,
            announced=announced,
        )
    if not plan.deliveries:
        return None
    return StoreEvent(
        event_id=event.id,
        trigger=event.trigger,
        body=body,
        deliveries=[
            NewDelivery(d.output, d.route, p, d.ordering_key, d.key_error)
            for d, p in zip(plan.deliveries, payloads, strict=True)
        ],
        seen=seen,
        source=event.source,
        announced=announced,
        received=received,
    )


class InputSink:
    """The `EventSink` one input holds: it knows the input's name and validation policy."""

    def __init__(self, pipeline: Pipeline, input_config: InputConfig):
        self._pipeline = pipeline
        self._input = input_config

    async def submit(self, events: Sequence[Event]) -> list[SubmitResult]:
        return await self._pipeline.submit(self._input, events)

    async def announced(self, events: Sequence[Event]) -> list[bool]:
        keys = [announced_key(event.trigger, event.data) for event in events]
        kept = await self._pipeline.spool.announced([key for key in keys if key is not None])
        return [key is not None and key in kept for key in keys]

    async def reject(self, raw: bytes, reason: str, *, trigger: str | None, meta: Mapping[str, Any]) -> int:
        return await self._pipeline.reject(self._input.name, raw, reason, trigger=trigger, meta=meta)

    def refused(self, status: int) -> None:
        self._pipeline.stats.incr("requests_rejected", input=self._input.name, status=str(status))

    def looked(self, outcome: str) -> None:
        self._pipeline.stats.incr("recovery_looks", input=self._input.name, outcome=outcome)
        if outcome != "failed":
            self._pipeline.last_looks[self._input.name] = time.time()
