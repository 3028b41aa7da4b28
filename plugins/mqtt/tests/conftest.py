"""Fixtures of the MQTT input's tests: the machine's Mosquitto, or a private one a test starts and stops."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from event_router.testing import free_port, require_program, require_service
from event_router_mqtt.testing import HOST, SHARED_PORT, MqttKit, PrivateBroker

#: the test kit's fixtures, opted into (docs/plugins.md, "Testing a plugin")
pytest_plugins = ["event_router.testing.fixtures"]


@pytest.fixture
def mqtt_kit(tmp_path: Path) -> Iterator[MqttKit]:
    """The machine's Mosquitto on 1883, with this test's own prefix and client id; the session is dropped after."""
    require_service("Mosquitto", HOST, SHARED_PORT)
    kit = MqttKit(tmp_path)
    yield kit
    kit.forget_session()


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Callable[..., PrivateBroker]]:
    """`private_broker(port=None, extra="")` writes a mosquitto.conf (loopback only) and returns the broker."""
    program = require_program("mosquitto")
    brokers: list[PrivateBroker] = []

    def make(port: int | None = None, extra: str = "") -> PrivateBroker:
        port = port or free_port()
        conf = tmp_path / f"mosquitto-{port}.conf"
        conf.write_text(f"listener {port} {HOST}\nallow_anonymous true\npersistence false\n{extra}\n")
        broker = PrivateBroker(port, conf=conf, program=program)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.stop()
