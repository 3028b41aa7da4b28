"""Decoding pulled messages (the REST `receivedMessages` form) into events. Pure logic, no emulator."""

from __future__ import annotations

import base64
from typing import Any

from gcloud.aio.pubsub import SubscriberMessage

from event_router.event import Event
from event_router_pubsub.decode import Undecodable, decode

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
    assert isinstance(no_attributes, Undecodable)
    assert (no_attributes.reason, no_attributes.trigger, no_attributes.raw) == ("no namespace attribute", None, b"{}")
    assert no_attributes.meta["attributes"] == {}

    empty_namespace = decode(received(b"{}", {"namespace": ""}), source="s", subscription=SUBSCRIPTION)
    assert isinstance(empty_namespace, Undecodable)
    assert empty_namespace.reason == "no namespace attribute"

    not_json = decode(received(b"\xff{", {"namespace": "transport.messageReceived"}), source="s", subscription="x")
    assert isinstance(not_json, Undecodable)
    assert not_json.reason.startswith("message data is not valid JSON")
    assert (not_json.trigger, not_json.raw) == ("transport.messageReceived", b"\xff{")
    assert not_json.meta["message_id"] == "42"
