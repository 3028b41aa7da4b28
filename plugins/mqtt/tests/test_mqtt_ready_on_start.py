"""READY=1 means the MQTT input is subscribed: the broker acknowledged its SUBSCRIBE (SUBACK), so what the
Connector publishes from then on reaches it. A broker that answers slowly (a proxy holding back its replies)
widens the time the input needs to connect and subscribe; events published the moment the router says
ready must all be stored."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from event_router.testing import TcpProxy, free_port, published_at_ready, require_service, wait_for
from event_router_mqtt.testing import HOST, SHARED_PORT, MqttKit

pytestmark = pytest.mark.slow

COUNT = 30


def test_events_published_when_ready_are_all_stored(tmp_path: Path) -> None:
    require_service("Mosquitto", HOST, SHARED_PORT)
    admin = free_port()
    with TcpProxy(HOST, SHARED_PORT, reply_delay=0.3) as proxy:
        kit = MqttKit(tmp_path, port=proxy.port)
        config = tmp_path / "router.toml"
        config.write_text(kit.config("qos = 1", f'[router.admin]\nlisten = "127.0.0.1:{admin}"'))
        messages = [kit.message() for _ in range(COUNT)]

        def publish() -> None:
            anyio.run(
                lambda: kit.publish(
                    *[(kit.topic("transport.messageReceived"), m, 1) for m in messages], port=SHARED_PORT
                )
            )

        try:
            with published_at_ready(config, admin, "subscribed to the MQTT broker", publish):
                wait_for(lambda: len(kit.lines()) >= COUNT, timeout=20, what=f"{COUNT} events stored")
                assert sorted(line["data"]["id"] for line in kit.lines()) == sorted(m["id"] for m in messages)
        finally:
            kit.forget_session(port=SHARED_PORT)
