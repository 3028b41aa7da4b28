"""The live tap: what becomes of each event and each delivery attempt, as it happens, for `event-router tap`.

The pipeline reports every submitted event (`Tap.event`) and the delivery workers every recorded attempt
(`Tap.deliveries`); the admin endpoint streams them to subscribers as server-sent events (`GET /tap`).

Invariants:
- with no subscriber, a report costs one attribute test (`Tap.active`): nothing is built;
- a subscriber never slows the router: each has a bounded queue, and what does not fit is counted and
  dropped (the subscriber is told how many, before its next record);
- `data` is masked (`core.masking.mask`, with what the event's schema fixes) unless the subscriber asked for
  it unmasked and the operator allowed that (`[router.admin] unmask`): events carry personal data
  (identities, messages, attribute values).
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from event_router.api.event import Event
from event_router.core.masking import Fixed, mask
from event_router.core.routing import compile_trigger_filter

#: records a subscriber's queue holds before further ones are dropped
QUEUE = 1000
#: subscribers at once: each costs a queue and a filter test per record
MAX_SUBSCRIBERS = 8
#: outcomes a delivery record can have (`deliveries_total`'s, and `retry`)
DELIVERY_OUTCOMES = ("delivered", "retry", "permanent", "retries_exhausted")
#: outcomes an event record can have (`SubmitResult.status`)
EVENT_OUTCOMES = ("accepted", "dead_lettered", "unrouted", "duplicate")
#: the header of the admin endpoint's answers to `GET /tap` that says which router.toml the router runs:
#: `event-router tap -c FILE` taps only the router of FILE, not whatever else listens where FILE says
CONFIG_HEADER = "Event-Router-Config"


def config_identity(path: Path) -> str:
    """`path` as `CONFIG_HEADER` carries it: absolute, symbolic links resolved (the router and the command
    may name the file differently), percent-encoded (a header is ASCII)."""
    return urllib.parse.quote(str(path.resolve()), safe="/")


def other_config(running: str, meant: str) -> str:
    """A router's refusal of a command meant for another router.toml (both as `CONFIG_HEADER` carries them)."""
    return (
        f"this router runs {urllib.parse.unquote(running)}, not {urllib.parse.unquote(meant)}: another router"
        " listens where that file's [router.admin] listen says"
    )


@dataclass(frozen=True, slots=True)
class TapFilter:
    """Which records a subscriber wants; an empty field does not filter."""

    triggers: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ()
    unmask: bool = False
    _trigger: Callable[[str], bool] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.triggers:
            # the routes' own glob (`transport.**`): one meaning of a trigger pattern everywhere
            object.__setattr__(self, "_trigger", compile_trigger_filter({"trigger": list(self.triggers)}))

    def accepts(self, record: Mapping[str, Any]) -> bool:
        if self._trigger is not None and not self._trigger(record.get("trigger") or ""):
            return False
        if self.outcomes and record["outcome"] not in self.outcomes:
            return False
        if record["type"] == "event":
            if self.routes and not set(self.routes) & set(record["routes"]):
                return False
            return not self.outputs or bool(set(self.outputs) & set(record["outputs"]))
        if self.routes and record["route"] not in self.routes:
            return False
        return not self.outputs or record["output"] in self.outputs


class Subscription:
    """One tap's queue. `next()` waits for a record; a `{"type": "dropped"}` record comes first when the
    queue overflowed since the last one taken."""

    def __init__(self, tap: Tap, wanted: TapFilter, size: int):
        self.tap = tap
        self.wanted = wanted
        self.dropped = 0
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(size)

    def offer(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1

    async def next(self) -> dict[str, Any]:
        """The next record (cancelling the wait loses none)."""
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            return {"type": "dropped", "count": dropped, "why": "this tap read slower than records came"}
        return await self._queue.get()

    def close(self) -> None:
        self.tap.unsubscribe(self)


class TapFull(Exception):
    """`MAX_SUBSCRIBERS` taps are open already."""


class Tap:
    def __init__(self, *, queue: int = QUEUE, max_subscribers: int = MAX_SUBSCRIBERS):
        self._subscribers: list[Subscription] = []
        self._queue = queue
        self._max = max_subscribers
        #: read on every report: False while nobody taps
        self.active = False

    def subscribe(self, wanted: TapFilter) -> Subscription:
        if len(self._subscribers) >= self._max:
            raise TapFull(f"{self._max} taps are open already; close one first")
        subscription = Subscription(self, wanted, self._queue)
        self._subscribers.append(subscription)
        self.active = True
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
        self.active = bool(self._subscribers)

    # --- what the router reports (callers test `active` first) ----------------------------------------

    def event(
        self,
        input_name: str,
        event: Event,
        outcome: str,
        routes: Sequence[str],
        outputs: Sequence[str],
        *,
        dead_letter: int | None = None,
        errors: Sequence[str] = (),
        fixed: Fixed | None = None,
    ) -> None:
        """`fixed`: what the event's schema fixes (`SchemaRegistry.fixed_values`), shown in masked data."""
        record: dict[str, Any] = {
            "type": "event",
            "time": time.time(),
            "input": input_name,
            "event_id": event.id,
            "trigger": event.trigger,
            "outcome": outcome,
            "routes": list(routes),
            "outputs": list(dict.fromkeys(outputs)),
        }
        if dead_letter is not None:
            record["dead_letter"] = dead_letter
        if errors:
            record["errors"] = list(errors)
        self._publish(record, event.data, fixed)

    def undecodable(self, input_name: str, trigger: str | None, error: str, dead_letter: int) -> None:
        """Something an input took that could not become an event (not JSON...): kept as a dead letter."""
        record = {
            "type": "event",
            "time": time.time(),
            "input": input_name,
            "event_id": None,
            "trigger": trigger,
            "outcome": "dead_lettered",
            "routes": [],
            "outputs": [],
            "dead_letter": dead_letter,
            "errors": [error],
        }
        self._publish(record, None, None)

    def deliveries(self, output: str, records: Iterable[dict[str, Any]]) -> None:
        """Recorded attempts of `output`: each with route, event_id, trigger, delivery, outcome, attempt and,
        as they apply, error, retry_in, dead_letter."""
        now = time.time()
        for record in records:
            self._publish({"type": "delivery", "time": now, "output": output, **record}, None, None)

    def _publish(self, record: dict[str, Any], data: Any, fixed: Fixed | None) -> None:
        masked: dict[str, Any] | None = None
        for subscription in self._subscribers:
            if not subscription.wanted.accepts(record):
                continue
            if record["type"] != "event":
                subscription.offer(record)
            elif subscription.wanted.unmask:
                subscription.offer({**record, "data": data})
            else:
                if masked is None:  # once per record, whatever the number of masked subscribers
                    masked = {**record, "data": mask(data, fixed), "masked": True}
                subscription.offer(masked)
