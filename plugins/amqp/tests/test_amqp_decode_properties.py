"""Property tests of the AMQP input's decoding: any delivery becomes an event or a dead letter that says why.

Messages are decoded by pamqp from the frames a broker sends (`delivered`), with the tolerant decoders the
input installs, as aiormq hands them to the input; no broker is needed. Names (routing key, exchange, message
id, content type, header keys) are any bytes, UTF-8 or not: RabbitMQ delivers them as they were published.
`bench/fuzz.py` (selector `A`) fuzzes the same path.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from event_router.api import BatchStore, Event, PluginContext
from event_router.api.decode import is_blank
from event_router.testing.decoding import RecordingSink, check_event, check_rejection, shipped_router
from event_router.testing.strategies import CONNECTOR_MESSAGES, HOSTILE_PAYLOADS, odd_names, payloads
from event_router_amqp.input import AmqpInput
from event_router_amqp.testing import delivered

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONFIG, SCHEMAS = shipped_router()
MAX_REDELIVERIES = 5

#: names as the broker sends them: any bytes, mostly UTF-8, at most 255
names = odd_names.filter(lambda b: len(b) <= 255)
#: what a field table can carry, as pamqp encodes it
header_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(width=32),  # pamqp writes floats in single precision
        st.text(max_size=20),
        st.builds(bytearray, st.binary(max_size=8)),
        st.decimals(places=2, min_value=-(10**6), max_value=10**6),
        st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1)),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=10,
)
#: headers; a bytes value is a long string of any bytes, UTF-8 or not
header_tables = st.dictionaries(
    names | st.just(b"x-delivery-count"), header_values | st.binary(max_size=20) | st.integers(-3, 8), max_size=4
)


#: nested 300 levels: pamqp reads that (it gives up near 500), orjson does not write it
DEEP_TABLE: dict[str, Any] = {}
for _ in range(299):
    DEEP_TABLE = {"k": DEEP_TABLE}


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def shown(name: bytes) -> str:
    """A name as meta holds it: its text, each byte that is not UTF-8 as `\\xNN`."""
    return name.decode("utf-8", "backslashreplace")


def make_input(tmp_path: Path) -> AmqpInput:
    context = PluginContext("broker", tmp_path, logging.getLogger("test"), tmp_path)
    return AmqpInput({"url": "amqp://guest:guest@127.0.0.1/", "max_redeliveries": MAX_REDELIVERIES}, context)


def decode(inp: AmqpInput, message: Any) -> tuple[Event | None, RecordingSink]:
    """The event `message` becomes, or None once its dead letter reached the sink, as the input stores them."""
    sink = RecordingSink()
    anyio.run(BatchStore(sink, logging.getLogger("test"), 1).store, [inp._decode(message)])
    return (sink.events[0] if sink.events else None), sink


@SETTINGS
@given(
    routing_key=names,
    body=payloads,
    headers=st.none() | header_tables,
    redelivered=st.booleans(),
    message_id=st.none() | names,
    content_type=st.none() | names,
    exchange=names,
)
@example(b"transport.messageReceived", b"[" * 5000 + b"]" * 5000, None, False, None, None, b"connector")
@example(b"transport.messageReceived", b'{"a":' * 600 + b"1" + b"}" * 600, None, False, None, None, b"connector")
@example(b"x", b"{}", {b"x-delivery-count": 2**63 - 1, b"y": {"z": [None]}}, True, b"m", None, b"connector")
@example(b"", b"\xff", None, False, None, None, b"connector")
# header tables nested deeper than orjson writes (254 levels) but not than pamqp reads: an event whose meta
# could not be stored, or a dead letter that could not be (a crash, then redelivery, again and again)
@example(b"transport.messageReceived", b"{}", {b"deep": DEEP_TABLE}, False, None, None, b"connector")
@example(b"transport.messageReceived", b"\xff", {b"deep": DEEP_TABLE}, False, None, None, b"connector")
# names that are not UTF-8: pamqp alone would fail on the frame, and the broker would deliver it again forever
@example(b"transport.\xffbad", b"{}", None, False, None, None, b"connector")
@example(
    b"transport.messageReceived",
    b"{}",
    {b"x-\xfe": b"v", b"t": [{b"\xed\xa0\x80": 1}]},
    False,
    b"\x80",
    b"\xc3",
    b"\xff",
)
def test_any_delivery_becomes_an_event_or_a_dead_letter(
    tmp_path_factory: pytest.TempPathFactory,
    routing_key: bytes,
    body: bytes,
    headers: Mapping[bytes, Any] | None,
    redelivered: bool,
    message_id: bytes | None,
    content_type: bytes | None,
    exchange: bytes,
) -> None:
    message = delivered(
        routing_key,
        body,
        exchange=exchange,
        redelivered=redelivered,
        # bytes keys are keys `delivered` takes; a Mapping's key type does not widen by itself
        headers=cast("Mapping[str | bytes, Any] | None", headers),
        message_id=message_id,
        content_type=content_type,
    )
    event, sink = decode(make_input(tmp_path_factory.getbasetemp()), message)
    count = (message.header.properties.headers or {}).get("x-delivery-count") if headers else None
    meta = event.meta if event is not None else sink.rejections[0].meta
    # every name is in meta as its text, bytes that are not UTF-8 as \xNN (storable: checked below)
    assert meta["exchange"] == shown(exchange)
    assert meta["routing_key"] == shown(routing_key)
    assert meta.get("message_id") == (shown(message_id) if message_id else None)
    assert meta.get("content_type") == (shown(content_type) if content_type else None)
    assert set(meta.get("headers", {})) == {shown(k) for k in headers or {} if k != b"x-delivery-count"}
    if event is not None:
        assert sink.rejections == []
        check_event(event, body, config=CONFIG, schemas=SCHEMAS)
        assert event.trigger == routing_key.decode()  # only a UTF-8 routing key makes an event
        assert event.data == (None if is_blank(body) else orjson.loads(body))
        return
    (rejection,) = sink.rejections
    check_rejection(rejection.raw, rejection.reason, rejection.trigger, rejection.meta, raw=body)
    assert rejection.trigger == (shown(routing_key) or None)
    if isinstance(count, int) and not isinstance(count, bool) and count > MAX_REDELIVERIES:
        assert rejection.reason == f"redelivered {count} times"
    elif not routing_key:
        assert rejection.reason == "no routing key: cannot tell the event type"
    elif not _is_utf8(routing_key):
        assert rejection.reason == "routing key is not UTF-8"
    else:
        assert rejection.reason.startswith("body is not valid JSON: ")
        assert len(rejection.reason) > len("body is not valid JSON: ")  # orjson's error, with its position
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(body)


@pytest.mark.parametrize(("trigger", "body"), CONNECTOR_MESSAGES)
def test_connector_messages_decode_to_their_trigger_and_data(tmp_path: Path, trigger: str, body: bytes) -> None:
    # as the Connector publishes: routing key = namespace, no properties at all
    event, sink = decode(make_input(tmp_path), delivered(trigger.encode(), body, exchange=b"connector"))
    assert sink.rejections == []
    assert event is not None
    plan = check_event(event, body, config=CONFIG, schemas=SCHEMAS)
    assert plan.dead_letter is None  # valid against the shipped schemas
    assert (event.trigger, event.data) == (trigger, orjson.loads(body))
    assert event.meta == {"exchange": "connector", "routing_key": trigger, "redelivered": False, "delivery_count": 0}


def test_hostile_payloads_become_dead_letters_with_their_bytes_or_events(tmp_path: Path) -> None:
    inp = make_input(tmp_path)
    outcome: dict[bytes, str] = {}
    for body in HOSTILE_PAYLOADS:
        event, sink = decode(inp, delivered(b"transport.messageReceived", body))
        if event is None:
            (rejection,) = sink.rejections
            check_rejection(rejection.raw, rejection.reason, rejection.trigger, rejection.meta, raw=body)
            outcome[body] = rejection.reason.split(":")[0]
        else:
            check_event(event, body, config=CONFIG, schemas=SCHEMAS)
            outcome[body] = "event"
    assert outcome[b"[" * 5000 + b"]" * 5000] == "body is not valid JSON"  # deeper than orjson parses
    assert outcome[b"[" * 1024 + b"]" * 1024] == "event"  # parsed; stored as a dead letter of its bytes
    assert outcome[b"1e400"] == "body is not valid JSON"  # beyond a double: refused, not made infinite
    assert outcome[b"\xef\xbb\xbf{}"] == "body is not valid JSON"
    assert outcome[b""] == "event"  # no body: an event without data
