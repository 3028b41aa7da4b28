"""A full spool: the input holds messages unacknowledged, resumes once there is room, and a router killed
meanwhile loses nothing, because what was not stored was not acknowledged either."""

from __future__ import annotations

import functools
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import pytest

from event_router.testing import MakeApp, RouterProcess, http_receiver, wait_for
from event_router_mqtt.testing import MqttKit, eventually

TOPIC = "transport.messageReceived"
pytestmark = pytest.mark.broker("mosquitto")

RETRY = 'retry = { initial_backoff = "50ms", max_backoff = "200ms", max_attempts = 1000 }'


def http_output(url: str) -> str:
    return f'[outputs.sink]\ntype = "http"\nurl = "{url}/hook"\n{RETRY}\n'


def stored_copies(bodies: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Connector message id -> the router event ids it became (one, unless it was stored twice)."""
    copies: dict[str, set[str]] = defaultdict(set)
    for body in bodies:
        copies[body["data"]["id"]].add(body["id"])
    return copies


@pytest.mark.anyio
async def test_spool_full_pauses_the_input_until_there_is_room(make_app: MakeApp, mqtt_kit: MqttKit) -> None:
    kit = mqtt_kit
    events = [kit.message() for _ in range(12)]
    with http_receiver() as receiver:
        receiver.respond(503)
        config = kit.config("qos = 1", "max_pending_events = 4", outputs=http_output(receiver.url))
        async with make_app(config) as app:
            await eventually(app.config.inputs["mq"].plugin.is_ready, what="the subscription")
            await kit.publish(*[(kit.topic(TOPIC), e, 1) for e in events])
            await eventually(lambda: app.stats.get("spool_full_rejections"), what="the spool to fill")
            assert app.spool.depth <= 4
            receiver.respond(200)
            await eventually(
                lambda: len(stored_copies(receiver.bodies())) == 12 and app.spool.depth == 0,
                what="every event delivered",
            )
    copies = stored_copies(receiver.bodies())
    assert set(copies) == {e["id"] for e in events}
    assert all(len(ids) == 1 for ids in copies.values()), "held messages were stored once, not again"


@pytest.mark.slow
def test_sigkill_while_the_spool_is_full_loses_nothing(mqtt_kit: MqttKit, tmp_path: Path) -> None:
    kit = mqtt_kit
    events = [kit.message() for _ in range(12)]
    with http_receiver() as receiver:
        receiver.respond(503)
        config = tmp_path / "router.toml"
        config.write_text(kit.config("qos = 1", "max_pending_events = 4", outputs=http_output(receiver.url)))
        router = RouterProcess(config).start()
        try:
            wait_for(
                lambda: any(r.get("msg") == "subscribed to the MQTT broker" for r in router.log_records()),
                what="the subscription",
            )
            anyio.run(functools.partial(kit.publish, *[(kit.topic(TOPIC), e, 1) for e in events]))
            wait_for(
                lambda: any(r.get("msg", "").startswith("spool full") for r in router.log_records()),
                timeout=30,
                what="the spool to fill",
            )
        finally:
            router.kill()
        receiver.respond(200)
        # The spool kept 4 events; the persistent session gives back every message not acknowledged.
        with RouterProcess(config, log=tmp_path / "again.log"):
            wait_for(lambda: len(stored_copies(receiver.bodies())) == 12, timeout=60, what="all 12 events")
    assert set(stored_copies(receiver.bodies())) == {e["id"] for e in events}
