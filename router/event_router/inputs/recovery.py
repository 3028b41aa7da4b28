"""Built-in input `connector`: gap recovery. Rebuilds, from the Connector's REST state, the events the router
never stored (docs/recovery.md).

```toml
[inputs.recovery]
type = "connector"
base_url = "http://127.0.0.1:8080"
api_key = { env = "CONNECTOR_API_KEY" }
interval = "5m"
slack = "10m"
settle = "30s"
covers = "connector"        # the webhook input: rebuilt events take its routes
```

At start, every `interval`, and soon after a gap in the input it covers (the core calls `gap_detected`:
that input was not ready and is again, or it refused requests) it lists what the Connector created or
changed since its watermark minus `slack` (messages, incoming requests, completed outgoing requests,
relationships, attributes) and submits each as the event the Connector would have raised, with
`meta.recovered = true`. The spool stores such an event only when no stored event announced the same
(`event_router.core.announced`): what arrived live is not stored again. Once a look's events are stored,
the watermark (`<data_dir>/recovery-<name>.json`) moves to the look's start; a failed look leaves it, and
the next one reaches back as far.

Settling: the Connector changes its state first and posts the webhook after, so a look can list a change
whose live event is still on its way. Rebuilt then, it would be stored, and the live event too (a live
event is never dropped for a key). So a change is submitted only by a look that starts at least `settle`
after the first look that listed it; the others stay in reach of the next look (the watermark does not
pass them), which comes `settle` later rather than `interval`. What a stored event announced already (the
core answers for a look's changes in one read) is left out first: only the changes without a key wait,
so live traffic does not bring a look every `settle`. The rule counts on the router's clock
when it first saw the change, not on the change's date: a received message's `createdAt` is the sender's
time, and the Connector may fetch (and announce) it much later.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aiohttp
import anyio
import orjson
from anyio.abc import TaskStatus

from event_router.api import (
    DURATION_SCHEMA,
    BatchStore,
    Event,
    EventSink,
    Input,
    PluginContext,
    hookimpl,
    parse_duration,
)
from event_router.core.announced import announced_key
from event_router.outputs.connector_api import CONNECTION_PROPERTIES, ENDPOINTS, ConnectorClient

__all__ = ["ConnectorRecoveryInput"]

#: bytes of one list answer read at most: the Connector does not page its lists
MAX_LIST: Final = 256 * 1024 * 1024
#: events handed to the core per submit
CHUNK: Final = 500


#: an incoming request's status -> the one it most likely had before (the Connector's LocalRequestStatus
#: order: Open, DecisionRequired, ManualDecisionRequired when the Decider left it to a human, Decided,
#: Completed once the response is sent; Expired from any open one)
_INCOMING_BEFORE: Final = {
    "DecisionRequired": "Open",
    "ManualDecisionRequired": "DecisionRequired",
    "Decided": "DecisionRequired",
    "Completed": "Decided",
    "Expired": "DecisionRequired",
}
_PEER_DELETION: Final = {"ToBeDeleted": "transport.peerToBeDeleted", "Deleted": "transport.peerDeleted"}


def connector_date(moment: datetime) -> str:
    """`moment` as the Connector writes dates (UTC, milliseconds, `Z`): what a `DateFilter` compares as text."""
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _parse(date: str) -> datetime:
    return datetime.fromisoformat(date.replace("Z", "+00:00"))


def _span(seconds: float) -> str:
    """A duration as router.toml would write it: 5m, 30s, 1h30m."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            whole, seconds = divmod(seconds, size)
            parts.append(f"{whole:g}{unit}")
    if seconds or not parts:
        parts.append(f"{seconds:g}s")
    return "".join(parts)


def _dated(date: str) -> bool:
    try:
        _parse(date)
    except ValueError:
        return False
    return True


def _as_of(relationship: Mapping[str, Any], log: list[Any], index: int) -> dict[str, Any]:
    """The relationship as its change `log[index]` left it: the audit log up to that entry, the status it
    set. The other fields as they are now (the REST state keeps no earlier version of them)."""
    entry = log[index]
    status = entry.get("newStatus", relationship.get("status"))
    return {**relationship, "status": status, "auditLog": log[: index + 1]}


class LookFailed(Exception):
    """The Connector did not answer a list as it should: this look is given up, the watermark stays."""


class ConnectorRecoveryInput(Input):
    """Gap recovery from the Connector's REST API (`type = "connector"`)."""

    type_name = "connector"
    rebuilds = True
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["base_url"],
        "properties": {
            **CONNECTION_PROPERTIES,
            "interval": DURATION_SCHEMA,
            "slack": DURATION_SCHEMA,
            "settle": DURATION_SCHEMA,
            "covers": {"type": "string", "minLength": 1},
        },
    }

    def __init__(self, config: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(config, context)
        self.client = ConnectorClient(config, owner=f"input {self.name}")
        self.interval = parse_duration(config.get("interval", "5m"))
        self.slack = parse_duration(config.get("slack", "10m"))
        self.settle = parse_duration(config.get("settle", "30s"))
        self.covered: str | None = config.get("covers")
        #: announced key -> monotonic time a look first listed the change (only those still in reach)
        self._first_seen: dict[bytes, float] = {}
        #: where the watermark is kept between runs
        self.state_path = context.data_dir / f"recovery-{self.name}.json"
        #: what the last look found (for logs and tests)
        self.last: dict[str, Any] = {}
        #: set by `gap_detected` while `run` runs: look again before the interval is over
        self._gap: anyio.Event | None = None
        #: what `gap_detected` was told last, for the look's log record
        self._gap_reason = ""

    def covers(self) -> str | None:
        return self.covered

    def guarantee(self) -> str:
        return f"recovered from the Connector every {_span(self.interval)}"

    def gap_detected(self, covered: str, reason: str) -> None:
        if self._gap is not None and not self._gap.is_set():
            self.log.info("gap in the covered input; looking again", extra={"covered": covered, "reason": reason})
            self._gap_reason = f"gap: {covered} {reason}"
            self._gap.set()

    async def run(self, sink: EventSink, *, task_status: TaskStatus[None]) -> None:
        await self.client.open()
        self._gap = anyio.Event()
        why = "start"
        # a gap's look waits this long after the last look began: a source that refuses on and on (a wrong
        # key at the Connector) makes looks come this often, not on every refusal
        spacing = min(self.interval, max(self.settle, 1.0))
        try:
            # ready at once: a Connector that is down delays recovery, not the live inputs
            task_status.started()
            while True:
                began = time.monotonic()
                pause = self.interval
                try:
                    found = await self.look(sink, why=why)
                except LookFailed as exc:
                    sink.looked("failed")
                    self.log.warning(
                        "recovery look failed; the next one reaches back as far", extra={"error": str(exc)}
                    )
                else:
                    sink.looked("recovered" if found["recovered"] else "nothing")
                    if found["deferred"]:
                        # what settles is submitted as soon as it may be, not an interval later
                        pause = min(self.interval, self.settle)
                why = "interval" if pause == self.interval else "settle"
                with anyio.move_on_after(pause):
                    await self._gap.wait()
                if self._gap.is_set():
                    why = self._gap_reason
                    await anyio.sleep(max(0.0, began + spacing - time.monotonic()))
                    self._gap = anyio.Event()
        finally:
            self._gap = None
            await self.client.close()

    # --- one look -------------------------------------------------------------------------------------

    async def look(self, sink: EventSink, *, why: str = "start") -> dict[str, Any]:
        """List what changed since the watermark minus `slack`, submit it, then move the watermark."""
        started_wall = datetime.now(UTC)
        started = time.monotonic()
        watermark = self._load() or started_wall
        since = connector_date(watermark - timedelta(seconds=self.slack))
        listed = await self._rebuild(since)
        # after the lists came: a change listed was in the Connector's state by then at the latest
        now = time.monotonic()
        fresh = await self._unannounced(sink, listed)
        events, deferred = self._settled(fresh, now)
        events.sort(key=lambda pair: pair[0])
        stored = duplicates = 0
        # held (the watermark waits with them: nothing is skipped) while the spool is full
        batches = BatchStore(sink, self.log, CHUNK, context={"input": self.name})
        for start in range(0, len(events), CHUNK):
            chunk = [event for _, event in events[start : start + CHUNK]]
            for result in await batches.store(chunk):
                if result.status == "duplicate":
                    duplicates += 1
                else:
                    stored += 1
        # what waits to settle must stay in the next look's reach, `slack` before the watermark
        oldest = min((_parse(when) for when, _ in deferred if _dated(when)), default=None)
        moved = started_wall if oldest is None else min(started_wall, oldest + timedelta(seconds=self.slack))
        self._save(moved)
        self.last = {
            "why": why,
            "since": since,
            "found": len(listed),
            "announced": len(listed) - len(fresh),
            "deferred": len(deferred),
            "recovered": stored,
            "duplicates": duplicates,
            "took": round(time.monotonic() - started, 3),
        }
        self.log.info("recovery look done" if stored == 0 else "recovery look rebuilt missed events", extra=self.last)
        return self.last

    async def _unannounced(self, sink: EventSink, listed: list[tuple[str, Event]]) -> list[tuple[str, Event]]:
        """The changes no stored event announced yet. Those that came live are left out before settling:
        held back, they would make every look while traffic goes on come `settle` after the last, each
        listing the newest live changes for the first time."""
        fresh: list[tuple[str, Event]] = []
        for start in range(0, len(listed), CHUNK):
            chunk = listed[start : start + CHUNK]
            flags = await sink.announced([event for _, event in chunk])
            fresh.extend(pair for pair, known in zip(chunk, flags, strict=True) if not known)
        return fresh

    def _settled(
        self, listed: list[tuple[str, Event]], now: float
    ) -> tuple[list[tuple[str, Event]], list[tuple[str, Event]]]:
        """(to submit, to leave for a later look): a change is submitted once a look `settle` after the first
        that listed it finds it again, so its live event, if any, had time to be stored first."""
        first_seen: dict[bytes, float] = {}
        ready: list[tuple[str, Event]] = []
        waiting: list[tuple[str, Event]] = []
        for when, event in listed:
            key = announced_key(event.trigger, event.data) or event.trigger.encode() + b"|" + when.encode()
            seen = first_seen[key] = self._first_seen.get(key, now)
            (ready if now - seen >= self.settle else waiting).append((when, event))
        # only what is still listed: the rest is out of reach or gone, and the map stays the look's size
        self._first_seen = first_seen
        return ready, waiting

    async def _rebuild(self, since: str) -> list[tuple[str, Event]]:
        """(date of the change, event) for everything the Connector lists as changed since `since`."""
        out: list[tuple[str, Event]] = []
        for message in await self._list("getMessages", {"createdAt": f">={since}"}):
            trigger = "transport.messageSent" if message.get("isOwn") else "transport.messageReceived"
            out.append(self._event(trigger, message, message.get("createdAt")))
        incoming = {r.get("id"): r for r in await self._list("getIncomingRequests", {"createdAt": f">={since}"})}
        for request in incoming.values():
            out.append(self._event("consumption.incomingRequestReceived", request, request.get("createdAt")))
        # decided since: created earlier maybe; those created since changed status too unless still Open
        for request in await self._list("getIncomingRequests", {"response.createdAt": f">={since}"}):
            incoming.setdefault(request.get("id"), request)
        for request in incoming.values():
            status = request.get("status")
            if isinstance(status, str) and status in _INCOMING_BEFORE:
                # only the latest status: the steps before it (and their events) are not kept
                data = {"request": request, "oldStatus": _INCOMING_BEFORE[status], "newStatus": status}
                when = (request.get("response") or {}).get("createdAt") or request.get("createdAt")
                out.append(self._event("consumption.incomingRequestStatusChanged", data, when))
        for request in await self._list(
            "getOutgoingRequests", {"response.createdAt": f">={since}", "status": "Completed"}
        ):
            data = {"request": request, "oldStatus": "Open", "newStatus": "Completed"}
            when = (request.get("response") or {}).get("createdAt")
            out.append(self._event("consumption.outgoingRequestStatusChanged", data, when))
        for relationship in await self._list("getRelationships", {}):
            # no date filter on this list: the audit log says when it changed. Every step in reach, each
            # as the relationship was then: one relationshipChanged per entry, the key (log length, entry
            # date) that step's live event announced
            log = relationship.get("auditLog")
            entries = log if isinstance(log, list) else []
            for index, entry in enumerate(entries):
                when = entry.get("createdAt") if isinstance(entry, Mapping) else None
                if isinstance(when, str) and when >= since:
                    step = relationship if index == len(entries) - 1 else _as_of(relationship, entries, index)
                    out.append(self._event("transport.relationshipChanged", step, when))
            # a peer's deletion adds no audit-log entry: `deletionDate` is the end of its grace period (to be
            # deleted, in the future) or when it was deleted; the key keeps it from being stored twice
            deletion = relationship.get("peerDeletionInfo")
            if isinstance(deletion, Mapping):
                status, date = deletion.get("deletionStatus"), deletion.get("deletionDate")
                deleted = _PEER_DELETION.get(status) if isinstance(status, str) else None
                if deleted is not None and isinstance(date, str) and date >= since:
                    out.append(self._event(deleted, relationship, date))
        out.extend(await self._attributes(since))
        return out

    async def _attributes(self, since: str) -> list[tuple[str, Event]]:
        """Attributes created since `since`: a successor (it `succeeds` another) was announced by
        attributeSucceeded with its predecessor, any other by attributeCreated. A deleted attribute is gone
        from the Connector's state before attributeDeleted is raised: that event cannot be rebuilt."""
        out: list[tuple[str, Event]] = []
        created = await self._list("getAttributes", {"createdAt": f">={since}"})
        by_id = {attribute.get("id"): attribute for attribute in created}
        for attribute in created:
            when, succeeds = attribute.get("createdAt"), attribute.get("succeeds")
            if not isinstance(succeeds, str):
                out.append(self._event("consumption.attributeCreated", attribute, when))
                continue
            predecessor = by_id.get(succeeds)
            if predecessor is None and isinstance(attribute.get("id"), str):
                # created before the reach, most likely: asked for by its successor, one list per succession
                found = await self._list("getAttributes", {"succeededBy": attribute["id"]})
                predecessor = next((a for a in found if a.get("id") == succeeds), None)
            if predecessor is not None:  # else deleted since: the succession cannot be told whole
                data = {"predecessor": predecessor, "successor": attribute}
                out.append(self._event("consumption.attributeSucceeded", data, when))
        return out

    def _event(self, trigger: str, data: Any, when: Any) -> tuple[str, Event]:
        # as if from the input it covers, so its routes take it; recovered_by says which input rebuilt it
        meta = {"recovered": True, "recovered_by": self.name}
        return str(when or ""), Event(trigger=trigger, data=data, source=self.covered or self.name, meta=meta)

    async def _list(self, operation: str, query: Mapping[str, str]) -> list[Mapping[str, Any]]:
        endpoint = ENDPOINTS[operation]
        try:
            answer = await self.client.request(endpoint.method, endpoint.path, query=query, limit=MAX_LIST)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise LookFailed(f"{operation}: {type(exc).__name__}: {self.client.scrub(str(exc))}") from exc
        if answer.status != endpoint.success or answer.cut:
            what = (
                "longer than the limit" if answer.cut else self.client.scrub(answer.raw[:300].decode(errors="replace"))
            )
            raise LookFailed(f"{operation} answered {answer.status}: {what}")
        try:
            result = orjson.loads(answer.raw).get("result")
        except (orjson.JSONDecodeError, AttributeError) as exc:
            raise LookFailed(f"{operation}: the answer is not the Connector's JSON envelope") from exc
        if not isinstance(result, list):
            raise LookFailed(f"{operation}: the answer's result is not a list")
        return [item for item in result if isinstance(item, Mapping)]

    # --- the watermark --------------------------------------------------------------------------------

    def _load(self) -> datetime | None:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return _parse(orjson.loads(raw)["watermark"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.log.error(
                "recovery watermark unreadable; looking back from now minus slack", extra={"path": str(self.state_path)}
            )
            return None

    def _save(self, moment: datetime) -> None:
        """Write the watermark durably: a temporary file, fsync, rename, fsync of the directory."""
        body = orjson.dumps({"watermark": connector_date(moment)})
        directory = self.state_path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{self.state_path.name}.")
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self.state_path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@hookimpl
def event_router_input_types() -> list[type[Input]]:
    return [ConnectorRecoveryInput]
