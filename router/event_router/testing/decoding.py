"""What must hold for whatever an input decodes, shared by the inputs' property tests and `bench/fuzz.py`.

Whatever bytes a broker hands an input, its decoding ends either in an `Event` that validation and routing
(`plan_event`) can handle and the spool can store, or in a rejection that says why and keeps the bytes
unchanged. The checks raise `AssertionError`: a failed property in a test, a crash under the fuzzer.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from event_router.api.event import Event
from event_router.api.plugin import SubmitResult
from event_router.config import build_config
from event_router.core.model import RouterConfig
from event_router.core.plan import Plan, plan_event
from event_router.core.validation import SchemaRegistry
from event_router.testing import ROOT


@dataclass(frozen=True, slots=True)
class Rejection:
    """One `EventSink.reject` call: what the input could not turn into an event, and why."""

    raw: bytes
    reason: str
    trigger: str | None
    meta: Mapping[str, Any]


class RecordingSink:
    """An `EventSink` that keeps what it is given: for an input's decoding, without a spool or a router."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.rejections: list[Rejection] = []
        self.refusals: list[int] = []
        self.looks: list[str] = []

    async def submit(self, events: Sequence[Event]) -> list[SubmitResult]:
        self.events.extend(events)
        return [SubmitResult(e.id, "accepted") for e in events]

    async def announced(self, events: Sequence[Event]) -> list[bool]:
        return [False] * len(events)

    async def reject(self, raw: bytes, reason: str, *, trigger: str | None, meta: Mapping[str, Any]) -> int:
        self.rejections.append(Rejection(raw, reason, trigger, meta))
        return len(self.rejections)

    def refused(self, status: int) -> None:
        self.refusals.append(status)

    def looked(self, outcome: str) -> None:
        self.looks.append(outcome)


@functools.cache
def shipped_router() -> tuple[RouterConfig, SchemaRegistry]:
    """The checkout's example router.toml (without its webhook API key, read from the environment) and the
    schemas it loads. Its last route archives every trigger, so each event is delivered or dead-lettered."""
    from event_router.app import load_schemas
    from event_router.plugin_loader import load_plugins

    registry = load_plugins(entry_points=False)
    path = ROOT / "router.toml"
    document = tomllib.loads(path.read_text())
    for table in document.get("inputs", {}).values():
        table.pop("api_key", None)
    config = build_config(document, path=path, registry=registry)
    return config, load_schemas(config, registry)


def check_event(event: Event, raw: bytes | None, *, config: RouterConfig, schemas: SchemaRegistry) -> Plan:
    """Assert what holds for an event an input decoded from `raw` (None: the message carried no data bytes).

    It names a trigger and keeps `raw` until it is stored; strict validation and routing end in deliveries
    or in a dead letter with a reason (`config` must route every trigger, as `shipped_router()` does); and
    the spool can store it: as JSON, or, for data nested deeper than orjson writes, as a dead letter of
    `raw` with its trigger. Returns the plan.
    """
    assert isinstance(event, Event), f"not an event: {event!r}"
    assert isinstance(event.trigger, str), f"trigger is not text: {event.trigger!r}"
    assert event.trigger, "an event without a trigger"
    assert event.raw == raw, f"the event keeps {event.raw!r} instead of the bytes it came from, {raw!r}"
    plan = plan_event(event, config=config, schemas=schemas, validation="strict")
    if plan.dead_letter is None:
        assert plan.deliveries, f"{event.trigger!r}: neither delivered nor dead-lettered"
    else:
        assert plan.dead_letter[1], f"{event.trigger!r}: dead letter without a reason"
    # what the pipeline writes when the event itself cannot be stored: these must always go
    orjson.dumps({"trigger": event.trigger, "source": event.source, "meta": event.meta})
    try:
        event.to_json()
        for delivery in plan.deliveries:
            orjson.dumps(delivery.payload)
    except TypeError as exc:
        assert "Recursion limit" in str(exc), f"event cannot be stored: {exc}"
        assert raw, "data too deep to store, and no bytes kept to dead-letter instead"
    return plan


def check_rejection(kept: bytes, reason: str, trigger: str | None, meta: Mapping[str, Any], *, raw: bytes) -> None:
    """Assert what holds for a message an input rejected: a reason, `raw` kept unchanged, a storable meta."""
    assert isinstance(reason, str), f"reason is not text: {reason!r}"
    assert reason.strip(), "a rejection without a reason"
    assert type(kept) is bytes, f"kept {type(kept).__name__}, not bytes"
    assert kept == raw, f"kept {kept!r} instead of {raw!r}"
    assert trigger is None or (isinstance(trigger, str) and trigger), f"odd trigger {trigger!r}"
    # `Pipeline.reject` stores these as JSON
    orjson.dumps({"trigger": trigger, "meta": dict(meta)})
