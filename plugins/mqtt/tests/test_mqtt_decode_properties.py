"""Property tests of the MQTT input's decoding: any message becomes an event or a dead letter that says why.

Messages are built the way aiomqtt builds them from paho's (`received`); no broker is needed.
`bench/fuzz.py` (selector `M`) fuzzes the same path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from event_router.api import PluginContext, Rejected
from event_router.api.decode import is_blank
from event_router.testing.decoding import check_event, check_rejection, shipped_router
from event_router.testing.strategies import CONNECTOR_MESSAGES, HOSTILE_PAYLOADS, odd_texts, payloads
from event_router_mqtt.input import MqttInput
from event_router_mqtt.testing import received

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONFIG, SCHEMAS = shipped_router()
PREFIX = "site-a/connector"


def make_input(prefix: str) -> MqttInput:
    context = PluginContext("mq", Path("/nonexistent"), logging.getLogger("test"), Path("/nonexistent"))
    return MqttInput({"url": "mqtt://127.0.0.1", "topic_prefix": prefix}, context)


INPUTS = {prefix: make_input(prefix) for prefix in ("", PREFIX)}

#: topics a broker can deliver (UTF-8, no wildcard, not empty): odd levels, empty ones, the prefix or near misses
levels = odd_texts.map(lambda t: t.replace("+", "").replace("#", "").replace("/", ""))
topics = st.one_of(
    st.builds("/".join, st.lists(levels, min_size=1, max_size=5)),
    st.builds(
        lambda p, rest: p + "/".join(rest),
        st.sampled_from(["", PREFIX, PREFIX + "/", "site-a/", "/"]),
        st.lists(levels, max_size=4),
    ),
).filter(lambda t: t and len(t.encode("utf-8", "surrogatepass")) <= 65535 and not _surrogates(t))


def _surrogates(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def expected_trigger(topic: str, prefix: str) -> str | None:
    """The namespace a topic stands for, worked out apart from the input's own code; None for none."""
    if prefix:
        if not topic.startswith(prefix + "/"):
            return None
        topic = topic[len(prefix) + 1 :]
    parts = topic.split("/")
    return None if "" in parts else ".".join(parts)


@SETTINGS
@given(
    prefix=st.sampled_from(sorted(INPUTS)),
    topic=topics,
    payload=payloads,
    qos=st.integers(0, 2),
    retain=st.booleans(),
)
@example("", "transport/messageReceived", b"[" * 5000 + b"]" * 5000, 1, False)
@example("", "transport/messageReceived", b"[" * 300 + b"]" * 300, 1, False)
@example(PREFIX, "site-a/connectorx/transport/messageReceived", b"{}", 0, False)
@example(PREFIX, PREFIX, b"{}", 0, True)
@example("", "transport//messageReceived", b"{}", 0, False)
@example("", "/transport/messageReceived", b"{}", 0, False)
def test_any_message_becomes_an_event_or_a_dead_letter(
    prefix: str, topic: str, payload: bytes, qos: int, retain: bool
) -> None:
    item = INPUTS[prefix]._decode(received(topic.encode(), payload, qos=qos, retain=retain))
    trigger = expected_trigger(topic, prefix)
    meta = {"topic": topic, "qos": qos, "retain": retain}
    if not isinstance(item, Rejected):
        check_event(item, payload, config=CONFIG, schemas=SCHEMAS)
        assert (item.trigger, item.meta) == (trigger, meta)
        assert item.data == (None if is_blank(payload) else orjson.loads(payload))
        return
    check_rejection(item.payload, item.reason, item.trigger, item.meta, raw=payload)
    assert item.meta == meta
    assert item.trigger == trigger
    if trigger is None:
        assert repr(topic.removeprefix(prefix + "/") if prefix else topic) in item.reason  # names the topic
        assert "topic_prefix" in item.reason or "empty level" in item.reason
    else:
        assert item.reason.startswith("payload is not valid JSON: ")
        assert len(item.reason) > len("payload is not valid JSON: ")  # orjson's error, with its position
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(payload)


@pytest.mark.parametrize("prefix", sorted(INPUTS))
@pytest.mark.parametrize(("trigger", "payload"), CONNECTOR_MESSAGES)
def test_connector_messages_decode_to_their_trigger_and_data(prefix: str, trigger: str, payload: bytes) -> None:
    # as the Connector publishes: topic = namespace with / for ., QoS 0, not retained
    topic = "/".join(filter(None, [prefix, trigger.replace(".", "/")]))
    event = INPUTS[prefix]._decode(received(topic.encode(), payload))
    assert not isinstance(event, Rejected)
    plan = check_event(event, payload, config=CONFIG, schemas=SCHEMAS)
    assert plan.dead_letter is None  # valid against the shipped schemas
    assert (event.trigger, event.data) == (trigger, orjson.loads(payload))


@pytest.mark.parametrize("payload", HOSTILE_PAYLOADS, ids=range(len(HOSTILE_PAYLOADS)))
def test_hostile_payloads_keep_their_bytes(payload: bytes) -> None:
    item = INPUTS[""]._decode(received(b"transport/messageReceived", payload, qos=1))
    if isinstance(item, Rejected):
        check_rejection(item.payload, item.reason, item.trigger, item.meta, raw=payload)
        assert item.reason.startswith("payload is not valid JSON: ")
    else:
        check_event(item, payload, config=CONFIG, schemas=SCHEMAS)
