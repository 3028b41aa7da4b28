"""Sessions and connections: what a broker keeps while the router is stopped, and a broker that is not there."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from event_router.testing import MakeApp, free_port
from event_router_mqtt.testing import HOST, MqttKit, PrivateBroker, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.broker("mosquitto")]

TOPIC = "transport.messageReceived"


def message_ids(kit: MqttKit) -> list[str]:
    return [line["data"]["id"] for line in kit.lines() if line["trigger"] == TOPIC]


def has(kit: MqttKit, data: dict[str, Any]) -> bool:
    return data["id"] in message_ids(kit)


async def test_persistent_session_keeps_qos1_published_while_stopped_but_not_qos0(
    make_app: MakeApp, mqtt_kit: MqttKit
) -> None:
    kit = mqtt_kit
    config = kit.config("qos = 1")  # clean_session defaults to false
    first = kit.message()
    async with make_app(config) as app:
        await eventually(app.config.inputs["mq"].plugin.is_ready, what="the subscription")
        await kit.publish((kit.topic(TOPIC), first, 1))
        await eventually(lambda: has(kit, first), what="the first event")
    kept = [kit.message(), kit.message()]
    qos0 = kit.message()
    last = kit.message()
    # Stopped: the session (subscription and queue) lives on in the broker under the client id.
    await kit.publish(
        (kit.topic(TOPIC), kept[0], 1),
        (kit.topic(TOPIC), kept[1], 1),
        (kit.topic(TOPIC), qos0, 0),
        (kit.topic(TOPIC), last, 1),
    )
    async with make_app(config):
        await eventually(lambda: has(kit, last), what="the events published while stopped")
    # The broker queues in publish order, so had it kept the QoS 0 message it would be here before `last`.
    # Mosquitto's default (queue_qos0_messages false) drops it: what the Connector publishes meanwhile is lost.
    assert message_ids(kit) == [first["id"], kept[0]["id"], kept[1]["id"], last["id"]]
    assert {line["meta"]["qos"] for line in kit.lines()} == {1}


async def test_a_broker_that_queues_qos0_keeps_connector_events_for_a_stopped_router(
    make_app: MakeApp, tmp_path: Path, private_broker: Callable[..., PrivateBroker]
) -> None:
    broker = private_broker(extra="queue_qos0_messages true").start()
    kit = MqttKit(tmp_path, port=broker.port)
    config = kit.config("qos = 1")
    async with make_app(config) as app:
        await eventually(app.config.inputs["mq"].plugin.is_ready, what="the subscription")
    events = [kit.message() for _ in range(3)]
    await kit.publish(*[(kit.topic(TOPIC), e, 0) for e in events])  # QoS 0, as the Connector publishes
    async with make_app(config):
        await eventually(lambda: len(kit.lines()) == 3, what="the queued QoS 0 events")
    assert message_ids(kit) == [e["id"] for e in events]
    # delivered at the publisher's QoS 0: nothing to acknowledge, the broker forgot them once sent
    assert {line["meta"]["qos"] for line in kit.lines()} == {0}


async def test_starts_without_the_broker_and_connects_when_it_comes(
    make_app: MakeApp, tmp_path: Path, private_broker: Callable[..., PrivateBroker], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    kit = MqttKit(tmp_path, port=port)
    config = kit.config("qos = 1").replace(f"mqtt://{HOST}:{port}", f"mqtt://router:s3cret-pw@{HOST}:{port}")
    broker = private_broker(port)
    async with make_app(config, ready=False) as app:
        plugin = app.config.inputs["mq"].plugin
        assert not plugin.is_ready(), "nothing to be ready with yet"
        await eventually(
            lambda: [r for r in caplog.records if r.getMessage() == "cannot connect to the MQTT broker"],
            what="a connection failure logged",
        )
        # /readyz says why, as the log does
        reason = app.readiness()["reasons"]["mq"]
        assert reason.startswith("cannot connect to the MQTT broker: ") and "Connection refused" in reason, reason
        assert "s3cret-pw" not in reason
        broker.start()
        await eventually(plugin.is_ready, what="the connection once the broker is up")
        assert plugin.not_ready_reason() is None and "reasons" not in app.readiness()
        before = kit.message()
        await kit.publish((kit.topic(TOPIC), before, 1))
        await eventually(lambda: has(kit, before), what="an event through the new connection")

        broker.stop()
        await eventually(lambda: not plugin.is_ready(), what="readiness to drop with the broker")
        assert plugin.not_ready_reason(), "not ready, and why"
        broker.start()  # a new broker, without the old session: the input subscribes again
        await eventually(plugin.is_ready, what="the reconnection")
        after = kit.message()
        await kit.publish((kit.topic(TOPIC), after, 1))
        await eventually(lambda: has(kit, after), what="an event after the reconnection")
    failure = next(r for r in caplog.records if r.getMessage() == "cannot connect to the MQTT broker")
    assert failure.broker == f"mqtt://router@{HOST}:{port}"  # type: ignore[attr-defined]
    assert "Connection refused" in failure.error  # type: ignore[attr-defined]
    assert any(r.getMessage() == "lost the MQTT broker; reconnecting" for r in caplog.records)
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "s3cret-pw" not in logged


async def test_stopping_stores_qos0_messages_already_received(
    make_app: MakeApp, tmp_path: Path, private_broker: Callable[..., PrivateBroker]
) -> None:
    # QoS 0 messages the broker has sent to the router's connection are the router's alone: stopping must
    # store those it has not handled yet, including those still unread in the socket. The broker queues
    # anything later for the session (queue_qos0), so after a restart every one is there, or one was lost.
    broker = private_broker(extra="queue_qos0_messages true\nmax_queued_messages 0").start()
    kit = MqttKit(tmp_path, port=broker.port)
    config = kit.config("qos = 1")
    events = [kit.message() for _ in range(2000)]
    async with make_app(config) as app:
        await eventually(app.config.inputs["mq"].plugin.is_ready, what="the subscription")
        # The QoS 1 message last: its PUBACK means the broker has forwarded every message before it.
        fence = (f"{kit.prefix}-fence/x", b"", 1)
        await kit.publish(*[(kit.topic(TOPIC), e, 0) for e in events], fence)
        # stopping right away, while the router is still working through the burst
    async with make_app(config):
        await eventually(lambda: len(kit.lines()) >= len(events), what="every event")
    assert sorted(message_ids(kit)) == sorted(e["id"] for e in events)
