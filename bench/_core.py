"""In-process scenarios on the core's own functions: routing_validation and spool_group_commit."""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from _common import example_body, rounded

BACKBONE = "did:e:backbone.example.org:dids:"
PEERS = ["c8886dfc472605bea411a6", "48fe8f9a46ef5b775e7657", "71d2c295ff91728b4b031d"]
MAIL_SHAPE = {
    "event": "id",
    "message": "data.id",
    "from": "data.createdBy",
    "first_recipient": "data.recipients.0.address",
    "title": "Mail from {{ data.createdBy }}: {{ data.content.subject }}",
    "system": {"const": "enmeshed"},
    "mail": {"subject": "data.content.subject", "body": "data.content.body"},
}


def fifty_routes() -> list[dict[str, Any]]:
    """50 routes of the kinds docs/routing.md shows: trigger globs, data conditions, a few reshapes, a catch-all."""
    routes: list[dict[str, Any]] = [
        {
            "name": "mail to CRM",
            "match": {"trigger": "transport.messageReceived", "data.content.@type": ["Mail"]},
            "to": "crm",
            "reshape": MAIL_SHAPE,
        },
        {
            "name": "unread mail from our backbone",
            "match": {
                "trigger": "transport.messageReceived",
                "data.createdBy": [{"prefix": "did:e:backbone.example.org:"}],
                "data.wasReadAt": [{"exists": False}],
            },
            "to": "audit",
        },
        {
            "name": "manual decisions",
            "match": {
                "trigger": "consumption.incomingRequestStatusChanged",
                "data.newStatus": ["ManualDecisionRequired"],
            },
            "to": "ops",
            "reshape": {
                "request": "data.request.id",
                "peer": "data.request.peer",
                "title": "data.request.content.title",
            },
        },
        {
            "name": "pending relationships",
            "match": {"trigger": "transport.relationshipChanged", "data.status": ["Pending"]},
            "to": "crm",
        },
        {"name": "relationship events", "match": {"trigger": "consumption.relationshipEvent.*"}, "to": "archive"},
        {
            "name": "peer deletion",
            "match": {
                "trigger": ["transport.peerToBeDeleted", "transport.peerDeleted"],
                "data.peerDeletionInfo": [{"exists": True}],
            },
            "to": "ops",
        },
        {
            "name": "large files",
            "match": {"trigger": "transport.fileOwnershipClaimed", "data.filesize": [{"numeric": [">", 10485760]}]},
            "to": "ops",
        },
        {
            "name": "attributes shared with us",
            "match": {"trigger": "consumption.attributeCreated", "data.@type": [{"anything-but": {"prefix": "Own"}}]},
            "to": "crm",
        },
        {
            "name": "requests asking for an e-mail address",
            "match": {
                "trigger": "consumption.incomingRequestReceived",
                "data.content.items.@type": ["ReadAttributeRequestItem"],
                "data.content.items.query.valueType": ["EMailAddress"],
            },
            "to": "crm",
            "reshape": {
                "request": "data.id",
                "peer": "data.peer",
                "title": "data.content.title",
                "expires": "data.content.expiresAt",
            },
        },
        {
            "name": "things a person must look at",
            "match": {
                "$or": [
                    {
                        "trigger": "consumption.incomingRequestStatusChanged",
                        "data.newStatus": ["ManualDecisionRequired"],
                    },
                    {"trigger": "transport.relationshipChanged", "data.status": ["Pending"]},
                ]
            },
            "to": "ops",
        },
        {
            "name": "completed outgoing requests",
            "match": {"trigger": "consumption.outgoingRequestStatusChanged", "data.newStatus": ["Completed"]},
            "to": "crm",
            "reshape": {"request": "data.request.id", "peer": "data.request.peer", "status": "data.newStatus"},
        },
        {
            "name": "messages that are not mail",
            "match": {
                "trigger": "transport.messageReceived",
                "data.content.@type": [{"anything-but": ["Mail", "Request", "ResponseWrapper"]}],
            },
            "to": "archive",
        },
        {
            "name": "urgent mail",
            "match": {"trigger": "transport.*", "data.content.subject": [{"suffix": "(urgent)"}]},
            "to": "ops",
        },
        {
            "name": "unsubscribe",
            "match": {
                "trigger": "transport.messageReceived",
                "data.content.subject": [{"equals-ignore-case": "unsubscribe"}],
            },
            "to": "ops",
        },
        {
            "name": "peers on other backbones",
            "match": {"trigger": "transport.**", "data.peer": [{"wildcard": "did:e:*.other.org:dids:*"}]},
            "to": "audit",
        },
    ]
    # per-peer routes: one per known peer and trigger family, most of which do not match a given event
    for i in range(24):
        peer = BACKBONE + PEERS[i % len(PEERS)] + ("" if i < len(PEERS) else f"{i:02d}")
        family = ("transport.messageReceived", "transport.relationshipChanged", "consumption.*")[i % 3]
        field = {"transport.messageReceived": "data.createdBy", "transport.relationshipChanged": "data.peer"}.get(
            family, "data.peer"
        )
        routes.append({"name": f"peer {i}", "match": {"trigger": family, field: [peer]}, "to": "crm"})
    for i, status in enumerate(["Active", "Rejected", "Revoked", "Terminated", "DeletionProposed", "Pending", "Open"]):
        routes.append(
            {
                "name": f"status {status}",
                "match": {"trigger": ["transport.relationshipChanged", "consumption.**"], "data.status": [status]},
                "to": ["crm", "audit"][i % 2 :],
            }
        )
    routes.append({"name": "all but runtime", "match": {"trigger": [{"anything-but": "runtime.**"}]}, "to": "audit"})
    while len(routes) < 49:
        n = len(routes)
        routes.append({"name": f"namespace {n}", "match": {"trigger": f"namespace{n}.**"}, "to": "archive"})
    routes.append({"name": "archive everything", "match": {"trigger": ["**"]}, "to": "archive"})
    assert len(routes) == 50
    return routes


def routing_document() -> dict[str, Any]:
    return {
        "router": {"data_dir": "var"},
        "inputs": {"connector": {"type": "webhook", "listen": "127.0.0.1:8787", "validation": "strict"}},
        "outputs": {
            "archive": {"type": "file", "path": "events.jsonl"},
            "audit": {"type": "file", "path": "audit-%Y-%m-%d.jsonl"},
            "crm": {"type": "http", "url": "http://127.0.0.1:9000/hooks/{{trigger}}"},
            "ops": {"type": "http", "url": "http://127.0.0.1:9001/ops"},
        },
        "routes": fifty_routes(),
    }


@contextmanager
def one_core() -> Iterator[int]:
    """Pin this process to one core for the block (the scenario measures what one core does)."""
    before = os.sched_getaffinity(0)
    core = max(before)
    os.sched_setaffinity(0, {core})
    try:
        yield core
    finally:
        os.sched_setaffinity(0, before)


def _rate(count: int, fn: Any, items: list[Any]) -> float:
    started = time.perf_counter()
    for item in items:
        fn(item)
    return count / (time.perf_counter() - started)


def routing_validation(quick: bool) -> dict[str, Any]:
    from event_router.api.event import Event
    from event_router.app import load_schemas
    from event_router.config import build_config
    from event_router.core.plan import plan_event
    from event_router.plugin_loader import load_plugins
    from event_router.testing import example_events

    count = 5_000 if quick else 20_000
    repeats = 3 if quick else 5
    with tempfile.TemporaryDirectory(prefix="bench-route-") as tmp:
        registry = load_plugins()
        config = build_config(routing_document(), path=Path(tmp) / "router.toml", registry=registry)
        schemas = load_schemas(config, registry)
    examples = [orjson.dumps(e) for e in example_events()]
    raws = [examples[i % len(examples)] for i in range(count)]
    # each event decoded from its own bytes, as the webhook input does, so no parsed object is shared
    meta = {"headers": {"content-type": "application/json"}, "remote": "127.0.0.1", "path": "/events"}
    events = []
    for raw in raws:
        body = orjson.loads(raw)
        events.append(Event(trigger=body["trigger"], data=body.get("data"), source="connector", meta=dict(meta)))

    def plan(event: Any) -> Any:
        return plan_event(event, config=config, schemas=schemas, validation="strict")

    def round_trip(raw: bytes) -> bytes:
        return orjson.dumps(orjson.loads(raw))

    checks = [plan(e) for e in events[: len(examples)]]
    deliveries = sum(len(p.deliveries) for p in checks) / len(checks)
    invalid = sum(1 for p in checks if not p.validation.valid)
    router_rates: list[float] = []
    base_rates: list[float] = []
    with one_core() as core:
        for _ in range(repeats):
            router_rates.append(_rate(count, plan, events))
            base_rates.append(_rate(count, round_trip, raws))
    best, base_best = max(router_rates), max(base_rates)
    return {
        "routes": len(config.routes),
        "events": count,
        "repeats": repeats,
        "pinned_core": core,
        "triggers": len(examples),
        "deliveries_per_event": round(deliveries, 2),
        "invalid_examples": invalid,
        "router": {
            "events_per_s": round(best),
            "events_per_s_median": round(statistics.median(router_rates)),
            "us_per_event": round(1e6 / best, 1),
        },
        "baseline": {
            "what": "orjson.loads + orjson.dumps of the webhook body",
            "events_per_s": round(base_best),
            "events_per_s_median": round(statistics.median(base_rates)),
        },
        "ratio": rounded(best / base_best, 4),
        "ratio_of": "plan_event (strict validation + 50 routes) events/s / JSON round-trip events/s (best of repeats)",
        "target": "router >= 20000 events/s on one core",
        "met": best >= 20_000,
    }


def _store_items(count: int) -> list[Any]:
    from event_router.api.event import Event
    from event_router.core.spool import NewDelivery, StoreEvent

    body = orjson.loads(example_body(1200))
    items = []
    for _ in range(count):
        event = Event(trigger=body["trigger"], data=body["data"], source="connector")
        items.append(
            StoreEvent(
                event_id=event.id,
                trigger=event.trigger,
                body=event.to_json(),
                deliveries=[NewDelivery("archive", "archive everything", None)],
            )
        )
    return items


async def _store_for(spool: Any, items: list[Any], seconds: float, writers: int) -> tuple[int, float, int]:
    """Store one event per call from `writers` concurrent tasks for `seconds`: (events, elapsed, commits)."""
    stored = 0
    commits = spool.commits
    deadline = time.monotonic() + seconds
    it = iter(items)

    async def writer() -> None:
        nonlocal stored
        while time.monotonic() < deadline:
            item = next(it, None)
            if item is None:  # ran out of prepared events: the rate stays right, the run is just shorter
                return
            await spool.store([item])
            stored += 1

    started = time.monotonic()
    await asyncio.gather(*(writer() for _ in range(writers)))
    return stored, time.monotonic() - started, spool.commits - commits


def spool_group_commit(quick: bool) -> dict[str, Any]:
    from event_router.core.spool.sqlite import SQLiteSpool

    seconds = 2.0 if quick else 5.0
    items = _store_items(200_000 if not quick else 60_000)

    async def measure(path: Path) -> dict[str, Any]:
        spool = SQLiteSpool(path)
        spool.open("exclusive")  # as the router: it keeps the counts
        try:
            await _store_for(spool, items[:200], 0.2, 8)  # warm: pages allocated, WAL created
            single = await _store_for(spool, items[200:], seconds, 1)
            grouped = await _store_for(spool, items[200 + single[0] :], seconds, 64)
        finally:
            spool.close()
        out = {}
        for name, (stored, elapsed, commits) in (("single", single), ("grouped", grouped)):
            out[name] = {
                "events_per_s": round(stored / elapsed),
                "events": stored,
                "commits": commits,
                "events_per_commit": round(stored / commits, 1) if commits else None,
            }
        return out

    with tempfile.TemporaryDirectory(prefix="bench-spool-") as tmp:
        figures = asyncio.run(measure(Path(tmp) / "spool.db"))
    grouped, single = figures["grouped"]["events_per_s"], figures["single"]["events_per_s"]
    return {
        "seconds": seconds,
        "body_bytes": len(items[0].body),
        "router": {"writers": 64, **figures["grouped"]},
        "baseline": {"writers": 1, "what": "one commit per event, each store awaited", **figures["single"]},
        "ratio": rounded(grouped / single if single else None, 2),
        "ratio_of": "group commit (64 concurrent writers) / one commit per event, events/s",
    }
