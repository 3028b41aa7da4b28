"""The MQTT input against the machine's Mosquitto: what the Connector publishes becomes events; what is
broken becomes a dead letter, acknowledged once and never delivered again."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from event_router.testing import MakeApp, connector_events, dead_letters, unique_relationship
from event_router_mqtt.testing import MqttKit, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.broker("mosquitto")]

#: valid JSON that orjson parses (up to 1024 levels) but cannot write back (254): only the bytes can be kept
DEEP = b"[" * 300 + b"]" * 300


def ready(app: Any) -> bool:
    return bool(app.config.inputs["mq"].plugin.is_ready())


async def test_what_the_connector_publishes_arrives_as_events(make_app: MakeApp, mqtt_kit: MqttKit) -> None:
    kit = mqtt_kit
    message = kit.message()
    relationship, rel_trigger = unique_relationship()
    # No topic_prefix and the default topics: exactly where the Connector publishes. Other tests on this
    # broker may publish there too, so lines are picked by what only this test sent.
    async with make_app(kit.config(prefix=False)) as app:
        await eventually(lambda: ready(app), what="the subscription")
        await kit.publish(
            ("transport/messageReceived", message, 0),
            (f"consumption/relationshipEvent/{relationship['id']}", relationship, 0),
            ("runtime/modulesStarted", b"{}", 0),
        )
        got = await eventually(
            lambda: connector_events(kit.lines(), message["id"], rel_trigger, "runtime.modulesStarted"),
            what="the three events in the file",
        )
    assert got["message"]["data"] == message
    assert got["message"]["source"] == "mq"
    assert got["message"]["meta"] == {"topic": "transport/messageReceived", "qos": 0, "retain": False}
    assert got[rel_trigger]["data"] == relationship
    assert got[rel_trigger]["meta"]["topic"] == f"consumption/relationshipEvent/{relationship['id']}"
    assert got["runtime.modulesStarted"]["data"] == {}


async def test_broken_messages_are_dead_lettered_once(make_app: MakeApp, mqtt_kit: MqttKit) -> None:
    kit = mqtt_kit
    invalid = kit.message()
    del invalid["createdBy"]
    marker = kit.message()
    config = kit.config('qos = 1\nunknown_triggers = "dead-letter"')
    async with make_app(config) as app:
        await eventually(lambda: ready(app), what="the subscription")
        await kit.publish(
            (kit.topic("transport.messageReceived"), b"{not json", 1),
            (kit.topic("transport.messageReceived"), invalid, 1),
            (kit.topic("transport.messageReceived"), b"", 1),
            (f"{kit.prefix}/transport//messageReceived", b"{}", 1),
            (kit.topic("transport.somethingNew"), {"x": 1}, 1),
            (kit.topic("runtime.modulesStarted"), b"", 1),
            (kit.topic("transport.messageSent"), DEEP, 1),
            (kit.topic("transport.messageReceived"), marker, 1),
        )
        await eventually(
            lambda: any(line["data"] and line["data"].get("id") == marker["id"] for line in kit.lines()),
            what="the marker event",
        )
        letters = dead_letters(app.config.data_dir)
    by_error = {dl.error: dl for dl in letters}
    assert sorted(dl.reason for dl in letters) == [
        "undecodable",
        "undecodable",
        "undecodable",
        "unknown_trigger",
        "validation",
        "validation",
    ], [(dl.reason, dl.error) for dl in letters]
    not_json = next(dl for e, dl in by_error.items() if e and e.startswith("payload is not valid JSON"))
    assert not_json.trigger == "transport.messageReceived"
    kept = orjson.loads(not_json.body)
    assert kept["raw"] == "{not json"
    assert kept["meta"] == {"topic": kit.topic("transport.messageReceived"), "qos": 1, "retain": False}
    assert any(e and "has an empty level" in e for e in by_error)
    deep = next(dl for dl in letters if dl.trigger == "transport.messageSent")
    # undecodable either way: the core fails on it (schema validation recursion) or cannot write it back
    assert deep.reason == "undecodable", deep.error
    assert orjson.loads(deep.body)["raw"] == DEEP.decode(), "kept as received"
    assert any(e and "createdBy" in e for e in by_error), "the schema error names the missing key"
    assert any(e and e.startswith('data: null is not of type "object"') for e in by_error), by_error
    no_data = [line for line in kit.lines() if line["trigger"] == "runtime.modulesStarted"]
    assert [line["data"] for line in no_data] == [None], "an empty payload is an event without data"

    # Same persistent session again: had anything been left unacknowledged, the broker would send it now.
    second = kit.message()
    async with make_app(config) as app:
        await eventually(lambda: ready(app), what="the subscription")
        await kit.publish((kit.topic("transport.messageReceived"), second, 1))
        await eventually(
            lambda: any(line["data"] and line["data"].get("id") == second["id"] for line in kit.lines()),
            what="the second marker",
        )
        assert len(dead_letters(app.config.data_dir)) == 6
    ids = [line["data"]["id"] for line in kit.lines() if line["trigger"] == "transport.messageReceived"]
    assert ids == [marker["id"], second["id"]]
