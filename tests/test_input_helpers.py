"""What `event_router.api` gives every broker input: `decode_event` (a Connector message -> Event or
Rejected), `BatchStore` (store, acknowledge each stored part, hold while the spool is full) and `Backoff`
(the waits between reconnects, on the router's RetryPolicy)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from event_router.api import Backoff, BatchStore, Event, Item, Rejected, RetryPolicy, decode_event
from event_router.api.decode import is_blank
from event_router.core.spool import DeadLetterFilter
from event_router.testing import example as connector_example
from event_router.testing import free_port, http_receiver, router_table, until, webhook_input
from event_router.testing.decoding import check_event, check_rejection, shipped_router
from event_router.testing.strategies import CONNECTOR_MESSAGES, HOSTILE_PAYLOADS, odd_texts, payloads

CONFIG, SCHEMAS = shipped_router()
META = {"queue": "q", "n": 1}

# --- decode_event ---------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trigger=st.none() | odd_texts, payload=payloads, refuse=st.none() | st.sampled_from(["delivered 9 times"]))
@example("transport.messageReceived", b"[" * 5000 + b"]" * 5000, None)
@example("transport.messageReceived", b"[" * 300 + b"]" * 300, None)
@example("", b"{}", None)
@example("transport.messageReceived", b" \r\n\t ", None)
@example("transport.messageReceived", b" \x0c ", None)
def test_any_payload_becomes_an_event_or_a_rejection_that_keeps_its_bytes(
    trigger: str | None, payload: bytes, refuse: str | None
) -> None:
    item = decode_event(trigger, payload, source="in", meta=dict(META), refuse=refuse, what="body")
    if isinstance(item, Event):
        assert refuse is None and trigger
        check_event(item, payload, config=CONFIG, schemas=SCHEMAS)
        assert (item.trigger, item.source, item.meta) == (trigger, "in", META)
        assert item.data == (None if is_blank(payload) else orjson.loads(payload))
        return
    assert isinstance(item, Rejected)
    check_rejection(item.payload, item.reason, item.trigger, item.meta, raw=payload)
    unicode = bool(trigger) and not any(0xD800 <= ord(c) <= 0xDFFF for c in trigger or "")
    assert item.trigger == (trigger if unicode else None)
    if refuse is not None:
        assert item.reason == refuse
    elif trigger and not unicode:
        assert item.reason == f"the event type {trigger!r} is not valid Unicode"
    elif not trigger:
        assert item.reason == "the message names no event type"
    else:
        assert item.reason.startswith("body is not valid JSON: ")
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(payload)


@pytest.mark.parametrize(("trigger", "payload"), CONNECTOR_MESSAGES)
def test_what_the_connector_publishes_is_an_event(trigger: str, payload: bytes) -> None:
    event = decode_event(trigger, payload, source="in", meta={})
    assert isinstance(event, Event)
    assert check_event(event, payload, config=CONFIG, schemas=SCHEMAS).dead_letter is None
    assert event.data == orjson.loads(payload)


@pytest.mark.parametrize("payload", [b"", b" ", b" " * 2_000_000, b"\r\n\t \n"])
def test_a_payload_of_whitespace_only_is_an_empty_one(payload: bytes) -> None:
    """Whitespace holds no JSON value, as an empty payload holds none: both are an event without data, and
    not a dead letter `not valid JSON: input data is empty`."""
    event = decode_event("runtime.modulesStarted", payload, source="in", meta={}, what="body")
    assert isinstance(event, Event) and (event.data, event.raw) == (None, payload)
    # whitespace JSON does not count (form feed) is no JSON: a dead letter, as before
    rejected = decode_event("runtime.modulesStarted", b" \x0c", source="in", meta={}, what="body")
    assert isinstance(rejected, Rejected) and rejected.reason.startswith("body is not valid JSON: ")


def test_what_is_kept_can_differ_from_the_payload() -> None:
    # an entry whose data is one field of several keeps them all (Redis streams)
    fields = b'{"trigger":"t.x","data":"[1]"}'
    event = decode_event("t.x", b"[1]", source="in", meta={}, keep=fields)
    assert isinstance(event, Event) and (event.data, event.raw) == ([1], fields)
    rejected = decode_event("t.x", b"[", source="in", meta={}, keep=fields, what='field "data"')
    assert isinstance(rejected, Rejected) and rejected.payload == fields
    assert rejected.reason.startswith('field "data" is not valid JSON: ')
    # keep=None: an event without bytes (a Pub/Sub message with attributes only); a dead letter keeps the payload
    bare = decode_event("t.x", b"", source="in", meta={}, keep=None)
    assert isinstance(bare, Event) and (bare.data, bare.raw) == (None, None)
    refused = decode_event(None, b"{}", source="in", meta={}, refuse="no namespace attribute", keep=None)
    assert isinstance(refused, Rejected) and (refused.payload, refused.trigger) == (b"{}", None)


@pytest.mark.parametrize("payload", HOSTILE_PAYLOADS, ids=range(len(HOSTILE_PAYLOADS)))
def test_hostile_payloads_never_raise(payload: bytes) -> None:
    item = decode_event("transport.messageReceived", payload, source="in", meta={})
    if isinstance(item, Rejected):
        check_rejection(item.payload, item.reason, item.trigger, item.meta, raw=payload)
    else:
        check_event(item, payload, config=CONFIG, schemas=SCHEMAS)


# --- Backoff --------------------------------------------------------------------------------------------


def test_reconnect_waits_grow_from_initial_to_maximum_with_full_jitter() -> None:
    backoff = Backoff.reconnect(4.0, initial=0.25)
    waits = [backoff.failed() for _ in range(4000)]
    ceilings = [min(4.0, 0.25 * 2**n) for n in range(6)]
    assert all(0.0 <= w <= ceilings[min(n, 5)] for n, w in enumerate(waits))
    # full jitter: spread over the whole range up to the maximum, and going on for ever (no give-up, no overflow)
    assert min(waits[10:]) < 0.4 and max(waits[10:]) > 3.6
    assert backoff.attempt == 4000
    assert Backoff.reconnect(0.1).failed() <= 0.1  # an initial above the maximum is the maximum


@pytest.mark.anyio
async def test_failing_again_soon_after_recovering_keeps_backing_off() -> None:
    """A broker that takes the connection and drops it at once: the count goes on, waits keep growing."""
    backoff = Backoff.reconnect(30.0, initial=1.0)
    for expected in range(1, 6):
        backoff.healthy()
        backoff.failed()
        assert backoff.attempt == expected
    assert backoff.healthy_after == 30.0  # by default the longest wait


@pytest.mark.anyio
async def test_staying_healthy_long_enough_starts_the_count_again() -> None:
    backoff = Backoff(RetryPolicy(max_age=0, initial_backoff=1.0, max_backoff=8.0), healthy_after=0.05)
    for _ in range(4):
        backoff.failed()
    backoff.healthy()
    start = anyio.current_time()
    while anyio.current_time() - start < 0.05:
        await anyio.sleep(0.01)
        backoff.healthy()  # healthy all along: the period counts from the first call
    assert backoff.failed() <= 1.0
    assert backoff.attempt == 1
    # and unhealthy time does not count: failing, waiting, failing again goes on counting
    await anyio.sleep(0.06)
    backoff.failed()
    assert backoff.attempt == 2


# --- BatchStore on a real spool -----------------------------------------------------------------------------


def message(n: int) -> bytes:
    """A message the shipped schemas accept, as the Connector publishes it (data only)."""
    data = connector_example("transport.messageReceived")["data"]
    return orjson.dumps({**data, "id": f"MSG{n:017d}"})


@pytest.mark.anyio
async def test_a_full_spool_holds_the_rest_unacknowledged_and_stores_each_item_once(
    make_app: Callable[[str], AbstractAsyncContextManager[Any]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limit = 3
    with http_receiver() as receiver:
        receiver.respond(503)  # deliveries stay pending: the spool fills up
        toml = (
            router_table(extra=f"max_pending_events = {limit}")
            + webhook_input(free_port(), name="broker", api_key=None)
            + f'[outputs.crm]\ntype = "http"\nurl = "{receiver.url}/in"\n'
            + 'retry = { max_attempts = 100000, max_age = 0, initial_backoff = "20ms", max_backoff = "50ms" }\n'
            + '[[routes]]\nname = "all"\nto = "crm"\n'
        )
        async with make_app(toml) as app:
            sink = app.pipeline.sink_for(app.config.inputs["broker"])
            items: list[Item] = [
                decode_event("transport.messageReceived", message(n), source="broker", meta={"n": n}) for n in range(6)
            ]
            items.insert(2, decode_event("transport.messageReceived", b"{", source="broker", meta={"n": "bad"}))
            acknowledged: list[tuple[int, int]] = []
            #: (end, events pending in the spool) at each acknowledgement
            depths: list[tuple[int, int]] = []
            waits: list[int] = []

            async def stored(start: int, end: int) -> None:
                acknowledged.append((start, end))
                depths.append((end, app.spool.depth))

            async def waiting(start: int) -> None:
                waits.append(start)

            store = BatchStore(sink, logging.getLogger("test.broker"), 4, context={"queue": "q"})
            with caplog.at_level(logging.INFO, logger="test.broker"):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(store.store, items, stored, waiting)
                    await until(lambda: len(waits) >= 2, what="store to wait for room twice")
                    # acknowledged only once stored: the spool held every event acknowledged (none delivered
                    # yet), and what it did not take is not acknowledged, and waited for again from there
                    assert depths == [(end, sum(isinstance(i, Event) for i in items[:end])) for end, _ in depths]
                    assert app.spool.depth == limit
                    held_from = max(end for _, end in acknowledged)
                    assert waits[-1] == held_from == 4  # 3 events and the dead letter
                    receiver.respond(200)
            assert acknowledged[0][0] == 0 and acknowledged[-1][1] == len(items)
            assert all(a[1] == b[0] for a, b in itertools.pairwise(acknowledged)), "no gap"
            await until(lambda: len(receiver.requests) >= 6 and app.spool.depth == 0, what="every event delivered")
            letters = app.spool.dead_letters(DeadLetterFilter())
    ids: dict[int, set[str]] = {}
    for request in receiver.requests:
        ids.setdefault(request.json()["meta"]["n"], set()).add(request.json()["id"])
    assert ids.keys() == set(range(6)) and all(len(v) == 1 for v in ids.values()), "each event stored once"
    assert [orjson.loads(dl.body)["meta"] for dl in letters] == [{"n": "bad"}], "the dead letter kept once"
    full = [r for r in caplog.records if r.getMessage().startswith("spool full")]
    assert len(full) == 1 and getattr(full[0], "queue", None) == "q", "logged once, with the input's context"
