"""Property tests of the Redis input's decoding, both modes: any published message or stream entry becomes an
event or a dead letter that says why.

Messages are the dicts redis-py yields (binary, no `decode_responses`); no Redis is needed. `bench/fuzz.py`
(selectors `R` and `S`) fuzzes the same paths.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from event_router.api import BatchStore, Rejected
from event_router.api.decode import is_blank
from event_router.testing.decoding import RecordingSink, check_event, check_rejection, shipped_router
from event_router.testing.strategies import CONNECTOR_MESSAGES, HOSTILE_PAYLOADS, odd_names, payloads
from event_router_redis.pubsub import PubSubReader
from event_router_redis.settings import parse_settings
from event_router_redis.stream import StreamReader

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONFIG, SCHEMAS = shipped_router()
LOG = logging.getLogger("test")
STORE = BatchStore(RecordingSink(), LOG, 10)  # decoding never stores
PUBSUB = PubSubReader(parse_settings({"url": "redis://127.0.0.1"}, "rd"), "rd", STORE)
MAX_DELIVERIES = 3
STREAM = StreamReader(
    parse_settings(
        {"url": "redis://127.0.0.1", "mode": "stream", "stream": "ev", "max_deliveries": MAX_DELIVERIES}, "rd"
    ),
    "rd",
    STORE,
    LOG,
)


def utf8(value: bytes) -> str | None:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def text(value: bytes) -> str:
    """Bytes as the dead letters of every input keep them: UTF-8, other bytes as `\\xNN` escapes."""
    return value.decode("utf-8", "backslashreplace")


# --- mode pubsub --------------------------------------------------------------------------------------


@SETTINGS
@given(channel=odd_names, data=payloads, pattern=st.none() | odd_names)
@example(b"transport.messageReceived", b"[" * 5000 + b"]" * 5000, b"transport.*")
@example(b"transport.messageReceived", b"[" * 300 + b"]" * 300, b"transport.*")
@example(b"transport.\xffmessageReceived", b"{}", b"transport.*")
@example(b"", b"{}", b"*")
def test_any_published_message_becomes_an_event_or_a_dead_letter(
    channel: bytes, data: bytes, pattern: bytes | None
) -> None:
    message = {"type": "pmessage", "pattern": pattern, "channel": channel, "data": data}
    item = PUBSUB.decode(message)
    trigger = utf8(channel)
    assert item.meta["channel"] == text(channel)
    if not isinstance(item, Rejected):
        check_event(item, data, config=CONFIG, schemas=SCHEMAS)
        assert item.trigger == trigger
        assert item.data == (None if data is None or is_blank(data) else orjson.loads(data))
        return
    check_rejection(item.payload, item.reason, item.trigger, item.meta, raw=data)
    if not trigger:
        assert item.trigger is None
        assert item.reason.startswith("channel name is ")
    else:
        assert item.trigger == trigger
        assert item.reason.startswith("message is not valid JSON: ")
        assert len(item.reason) > len("message is not valid JSON: ")  # orjson's error, with its position
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(data)


@pytest.mark.parametrize(("trigger", "data"), CONNECTOR_MESSAGES)
def test_connector_publishes_decode_to_their_trigger_and_data(trigger: str, data: bytes) -> None:
    # PUBLISH <namespace> <compact JSON of data>, received through PSUBSCRIBE
    pattern = trigger.split(".", maxsplit=1)[0].encode() + b".*"
    event = PUBSUB.decode({"type": "pmessage", "pattern": pattern, "channel": trigger.encode(), "data": data})
    assert not isinstance(event, Rejected)
    plan = check_event(event, data, config=CONFIG, schemas=SCHEMAS)
    assert plan.dead_letter is None  # valid against the shipped schemas
    assert (event.trigger, event.data) == (trigger, orjson.loads(data))


# --- mode stream --------------------------------------------------------------------------------------

field_names = odd_names | st.sampled_from([b"trigger", b"namespace", b"data", b"source"])
entries = st.dictionaries(field_names, odd_names | payloads, max_size=5) | st.fixed_dictionaries(
    {b"trigger": odd_names, b"data": payloads}, optional={b"namespace": odd_names, b"x": odd_names}
)


@SETTINGS
@given(fields=entries, deliveries=st.integers(1, MAX_DELIVERIES + 2))
@example({b"trigger": b"transport.messageReceived", b"data": b"[" * 5000 + b"]" * 5000}, 1)
@example({b"trigger": b"transport.messageReceived", b"data": b"[" * 300 + b"]" * 300}, 1)
@example({b"trigger": b"", b"namespace": b"transport.messageReceived", b"data": b"{}"}, 1)
@example({b"trigger": b"\xff", b"data": b"{}"}, 1)
@example({b"data": b"{}", b"\xff": b"\xfe"}, 1)
@example({b"trigger": b"x", b"data": b"{}"}, MAX_DELIVERIES + 1)
def test_any_stream_entry_becomes_an_event_or_a_dead_letter(fields: dict[bytes, bytes], deliveries: int) -> None:
    item = STREAM._decode(b"1700000000000-0", fields, deliveries)
    raw = item.raw if not isinstance(item, Rejected) else item.payload
    assert raw is not None
    kept = orjson.loads(raw)
    # every field is kept, as text (bytes that are not UTF-8 escaped as in every dead letter)
    assert kept == {text(k): text(v) for k, v in fields.items()}
    trigger_raw = fields.get(b"trigger") or fields.get(b"namespace") or None
    trigger = utf8(trigger_raw) if trigger_raw else None
    data = fields.get(b"data")
    if not isinstance(item, Rejected):
        check_event(item, raw, config=CONFIG, schemas=SCHEMAS)
        assert (item.trigger, item.meta["deliveries"]) == (trigger, deliveries)
        assert item.data == (None if data is None or is_blank(data) else orjson.loads(data))
        return
    check_rejection(item.payload, item.reason, item.trigger, item.meta, raw=raw)
    if deliveries > MAX_DELIVERIES:
        assert item.reason.startswith(f"delivered {deliveries} times without being acknowledged")
    elif trigger_raw is None:
        assert item.reason.startswith('entry has no "trigger" (or "namespace") field')
    elif trigger is None:
        assert item.reason == "the trigger field is not UTF-8"
    else:
        assert item.trigger == trigger
        assert item.reason.startswith('field "data" is not valid JSON: ')
        assert data
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(data)


@pytest.mark.parametrize("key", [b"trigger", b"namespace"])
@pytest.mark.parametrize(("trigger", "data"), CONNECTOR_MESSAGES)
def test_bridged_connector_events_decode_to_their_trigger_and_data(key: bytes, trigger: str, data: bytes) -> None:
    # XADD <stream> * trigger <namespace> data <compact JSON of data>
    fields: dict[bytes, Any] = {key: trigger.encode(), b"data": data}
    event = STREAM._decode(b"1-1", fields, 1)
    assert not isinstance(event, Rejected)
    plan = check_event(event, event.raw, config=CONFIG, schemas=SCHEMAS)
    assert plan.dead_letter is None
    assert (event.trigger, event.data) == (trigger, orjson.loads(data))


@pytest.mark.parametrize("data", HOSTILE_PAYLOADS, ids=range(len(HOSTILE_PAYLOADS)))
def test_hostile_data_keeps_its_bytes(data: bytes) -> None:
    message = PUBSUB.decode(
        {"type": "pmessage", "pattern": b"*", "channel": b"transport.messageReceived", "data": data}
    )
    entry = STREAM._decode(b"1-1", {b"trigger": b"transport.messageReceived", b"data": data}, 1)
    for item, raw in (
        (message, data),
        (entry, orjson.dumps({"trigger": "transport.messageReceived", "data": text(data)})),
    ):
        if isinstance(item, Rejected):
            check_rejection(item.payload, item.reason, item.trigger, item.meta, raw=raw)
        else:
            check_event(item, raw, config=CONFIG, schemas=SCHEMAS)
