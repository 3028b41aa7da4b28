"""Decoding pulled messages (the REST `receivedMessages` form) into events. Pure logic, no emulator.

`bench/fuzz.py` (selector `P`) fuzzes the same path.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from gcloud.aio.pubsub import SubscriberMessage
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from event_router.api import Event, Rejected
from event_router.api.decode import is_blank
from event_router.testing.decoding import check_event, check_rejection, shipped_router
from event_router.testing.strategies import CONNECTOR_MESSAGES, odd_texts, payloads
from event_router_pubsub.decode import NAMESPACE_ATTRIBUTE, decode

SUBSCRIPTION = "projects/p-1/subscriptions/enmeshed-events"


def received(data: bytes | None, attributes: dict[str, str] | None, **extra: Any) -> SubscriberMessage:
    message: dict[str, Any] = {"messageId": "42", "publishTime": "2026-01-02T03:04:05.123456789Z"}
    if data is not None:
        message["data"] = base64.b64encode(data).decode()
    if attributes is not None:
        message["attributes"] = attributes
    return SubscriberMessage.from_repr({"ackId": "ack-1", "message": message, **extra})


def test_event_and_meta() -> None:
    event = decode(
        received(b'{"id":"MSGa"}', {"namespace": "transport.messageReceived"}, deliveryAttempt=3),
        source="connector",
        subscription=SUBSCRIPTION,
    )
    assert isinstance(event, Event)
    assert (event.trigger, event.data, event.source) == ("transport.messageReceived", {"id": "MSGa"}, "connector")
    assert event.meta == {
        "message_id": "42",
        "publish_time": "2026-01-02T03:04:05.123456Z",  # nanoseconds cut to what Python keeps
        "attributes": {"namespace": "transport.messageReceived"},
        "subscription": SUBSCRIPTION,
        "delivery_attempt": 3,
    }


def test_millisecond_publish_time_keeps_its_form() -> None:
    message = SubscriberMessage.from_repr(
        {"ackId": "a", "message": {"messageId": "1", "publishTime": "2026-11-27T00:06:58.356Z", "data": "e30="}}
    )
    assert decode(message, source="s", subscription=SUBSCRIPTION).meta["publish_time"] == "2026-11-27T00:06:58.356Z"


def test_attribute_only_message_has_no_data() -> None:
    event = decode(received(None, {"namespace": "runtime.modulesStarted"}), source="s", subscription=SUBSCRIPTION)
    assert isinstance(event, Event)
    assert event.data is None


def test_rejections_keep_bytes_trigger_and_meta() -> None:
    no_attributes = decode(received(b"{}", None), source="s", subscription=SUBSCRIPTION)
    assert isinstance(no_attributes, Rejected)
    assert (no_attributes.reason, no_attributes.trigger, no_attributes.payload) == (
        "no namespace attribute",
        None,
        b"{}",
    )
    assert no_attributes.meta["attributes"] == {}

    empty_namespace = decode(received(b"{}", {"namespace": ""}), source="s", subscription=SUBSCRIPTION)
    assert isinstance(empty_namespace, Rejected)
    assert empty_namespace.reason == "namespace attribute is empty"

    not_json = decode(received(b"\xff{", {"namespace": "transport.messageReceived"}), source="s", subscription="x")
    assert isinstance(not_json, Rejected)
    assert not_json.reason.startswith("message data is not valid JSON")
    assert (not_json.trigger, not_json.payload) == ("transport.messageReceived", b"\xff{")
    assert not_json.meta["message_id"] == "42"


# --- properties: any pulled message becomes an event or a dead letter that says why ---------------------

CONFIG, SCHEMAS = shipped_router()
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: attribute values as the REST API's JSON can carry them (a server that breaks the API may send any JSON)
attribute_values = odd_texts | st.none() | st.integers() | st.lists(odd_texts, max_size=2)
attributes = (
    st.none()
    | st.dictionaries(odd_texts | st.just(NAMESPACE_ATTRIBUTE), attribute_values, max_size=4)
    | st.fixed_dictionaries({NAMESPACE_ATTRIBUTE: odd_texts}, optional={"x": odd_texts})
)


@SETTINGS
@given(
    data=st.none() | payloads,
    attributes=attributes,
    message_id=odd_texts,
    delivery_attempt=st.none() | st.integers(0, 2**31),
    publish_time=st.sampled_from(
        ["2026-01-02T03:04:05.123456789Z", "2026-01-02T03:04:05Z", "2026-01-02T03:04:05+02:00", "1970-01-01T00:00:00"]
    ),
)
@example(
    b"[" * 5000 + b"]" * 5000, {NAMESPACE_ATTRIBUTE: "transport.messageReceived"}, "1", None, "2026-01-02T03:04:05Z"
)
@example(b"[" * 300 + b"]" * 300, {NAMESPACE_ATTRIBUTE: "transport.messageReceived"}, "1", None, "2026-01-02T03:04:05Z")
@example(b"{}", {NAMESPACE_ATTRIBUTE: 5}, "1", None, "2026-01-02T03:04:05Z")
@example(b"{}", {NAMESPACE_ATTRIBUTE: "\ud800"}, "1", None, "2026-01-02T03:04:05Z")
@example(
    b"{}", {NAMESPACE_ATTRIBUTE: "runtime.modulesStarted", "\ud800": "\udfff"}, "\ud800", 1, "2026-01-02T03:04:05Z"
)
def test_any_message_becomes_an_event_or_a_dead_letter(
    data: bytes | None,
    attributes: dict[str, Any] | None,
    message_id: str,
    delivery_attempt: int | None,
    publish_time: str,
) -> None:
    message: dict[str, Any] = {"messageId": message_id, "publishTime": publish_time}
    if data is not None:
        message["data"] = base64.b64encode(data).decode()
    if attributes is not None:
        message["attributes"] = attributes
    pulled: dict[str, Any] = {"ackId": "a", "message": message}
    if delivery_attempt is not None:
        pulled["deliveryAttempt"] = delivery_attempt
    item = decode(SubscriberMessage.from_repr(pulled), source="connector", subscription=SUBSCRIPTION)
    namespace = (attributes or {}).get(NAMESPACE_ATTRIBUTE)
    if isinstance(item, Event):
        check_event(item, data or None, config=CONFIG, schemas=SCHEMAS)
        assert item.trigger == namespace
        assert item.data == (None if data is None or is_blank(data) else orjson.loads(data))
        assert item.meta["publish_time"].endswith("Z")
        return
    assert isinstance(item, Rejected)
    check_rejection(item.payload, item.reason, item.trigger, item.meta, raw=data or b"")
    if not isinstance(namespace, str) or not namespace:
        assert item.trigger is None
        assert "namespace attribute" in item.reason
    elif not _unicode(namespace):
        assert item.trigger is None
        assert item.reason.startswith("namespace attribute is not valid Unicode")
    else:
        assert item.trigger == namespace
        assert item.reason.startswith("message data is not valid JSON: ")
        assert len(item.reason) > len("message data is not valid JSON: ")  # orjson's error, with its position
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(data or b"")


def _unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@pytest.mark.parametrize(("trigger", "data"), CONNECTOR_MESSAGES)
def test_connector_messages_decode_to_their_trigger_and_data(trigger: str, data: bytes) -> None:
    # as the Connector publishes: data = the JSON of the event's data, one attribute `namespace`
    event = decode(received(data, {NAMESPACE_ATTRIBUTE: trigger}), source="connector", subscription=SUBSCRIPTION)
    assert isinstance(event, Event)
    plan = check_event(event, data, config=CONFIG, schemas=SCHEMAS)
    assert plan.dead_letter is None  # valid against the shipped schemas
    assert (event.trigger, event.data) == (trigger, orjson.loads(data))
