"""Helpers of this plugin's tests: publish exactly as the enmeshed Connector does, a private Mosquitto.

The Connector's MQTT broker (mqtt.js) publishes each event to the topic `<namespace with / for .>` with the
compact JSON of its data, QoS 0, retain false. `MqttKit` does the same under a per-test prefix (or without
one), writes the router.toml of a test and reads the file output back. Used by plugins/mqtt/tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from event_router.testing import ServerProcess, example, read_jsonl, until, wait_for

HOST = "127.0.0.1"
SHARED_PORT = 1883


def received(topic: bytes, payload: bytes, *, qos: int = 0, retain: bool = False, mid: int = 1) -> aiomqtt.Message:
    """A message as aiomqtt hands it to a subscriber: made from paho's `MQTTMessage`, as aiomqtt's callback does.

    Raises where aiomqtt would, before any input sees the message: `UnicodeDecodeError` for a topic that is
    not UTF-8, `ValueError` for an empty topic or one with a wildcard (a broker delivers neither).
    """
    message = paho.MQTTMessage(mid, topic)
    message.payload = payload
    message.qos = qos
    message.retain = retain
    return aiomqtt.Message._from_paho_message(message)


@dataclass
class MqttKit:
    """One test's corner of a broker: a unique topic prefix and client id, a router.toml, the output file."""

    tmp: Path
    port: int = SHARED_PORT
    prefix: str = field(default_factory=lambda: f"ert-{uuid.uuid4().hex[:10]}")
    client_id: str = field(default_factory=lambda: f"ert-{uuid.uuid4().hex[:12]}")

    @property
    def out(self) -> Path:
        return self.tmp / "out" / "events.jsonl"

    def topic(self, namespace: str) -> str:
        """Where the Connector publishes `namespace`, under this test's prefix (stripped by topic_prefix)."""
        return f"{self.prefix}/{namespace.replace('.', '/')}"

    def config(self, input_extra: str = "", router_extra: str = "", *, prefix: bool = True, outputs: str = "") -> str:
        prefix_line = f'topic_prefix = "{self.prefix}"' if prefix else ""
        archive = f'[outputs.archive]\ntype = "file"\npath = "{self.out}"\n'
        return f"""
[router]
data_dir = "{self.tmp}/var"
unmatched = "dead-letter"
{router_extra}
[inputs.mq]
type = "mqtt"
url = "mqtt://{HOST}:{self.port}"
client_id = "{self.client_id}"
reconnect_max = "500ms"
{prefix_line}
{input_extra}
{outputs or archive}
[[routes]]
name = "all"
match = {{ trigger = ["**"] }}
to = ["{"sink" if outputs else "archive"}"]
"""

    @staticmethod
    def message() -> dict[str, Any]:
        """The data of a valid `transport.messageReceived` with an id no other test uses."""
        data: dict[str, Any] = example("transport.messageReceived")["data"]
        data["id"] = "MSG" + uuid.uuid4().hex[:17].upper()
        return data

    def lines(self) -> list[dict[str, Any]]:
        return read_jsonl(self.out)

    async def publish(self, *messages: tuple[str, bytes | dict[str, Any], int], port: int | None = None) -> None:
        """Publish (topic, payload, qos) like mqtt.js does for the Connector: JSON bytes, retain false."""
        async with aiomqtt.Client(HOST, port or self.port, identifier=f"pub-{uuid.uuid4().hex[:8]}") as client:
            for topic, payload, qos in messages:
                body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
                await client.publish(topic, body, qos=qos, retain=False)

    def forget_session(self, port: int | None = None) -> None:
        """Connect once with clean_session so the broker drops this test's persistent session."""
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        try:
            client.connect(HOST, port or self.port)
            client.loop_start()
            wait_for(client.is_connected, timeout=10, what="clean-session connect")
            client.disconnect()
            client.loop_stop()
        except OSError:
            pass  # the broker is gone: so is the session


async def eventually(check: Callable[[], Any], within: float = 30.0, what: str = "condition") -> Any:
    """The test kit's `until`, with this plugin's longer default wait."""
    return await until(check, what, within=within, interval=0.05)


@dataclass
class PrivateBroker(ServerProcess):
    """A Mosquitto this test started on its own port, stopped by process id.

    `program` is the mosquitto binary: in tests the path `require_program("mosquitto")` found, so a missing
    one fails in CI instead of skipping; elsewhere (the soak bench) the one on PATH.
    """

    conf: Path = field(kw_only=True)
    program: str = field(kw_only=True, default="mosquitto")

    def command(self) -> list[str]:
        return [self.program, "-c", str(self.conf)]
