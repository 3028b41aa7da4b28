"""The amqp input when the broker never answers a step of setting up the consumer.

RabbitMQ 3.10.8 leaves a quorum queue killed within about 0.5 s of its creation without a leader
(rabbitmq/ra#443): `basic.consume` on it is never answered. A proxy in front of the real RabbitMQ plays that
broker: it relays everything but drops the broker's `basic.consume-ok` while told to.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from pathlib import Path

import anyio
import orjson
import pytest

from event_router.testing import MakeApp, TcpProxy, read_jsonl, until
from event_router_amqp.testing import Broker, ConnectorPublisher, input_toml, mail

pytestmark = [pytest.mark.anyio, pytest.mark.broker("rabbitmq")]

#: class and method id of basic.consume-ok, the first four bytes of its method frame's payload
CONSUME_OK = struct.pack(">HH", 60, 21)


class SwallowingProxy(TcpProxy):
    """A TCP relay on loopback to RabbitMQ that parses the broker's frames and drops `basic.consume-ok` while
    `swallow` is set. Everything else goes through unchanged, so the AMQP handshake, declares and binds are
    the real broker's."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1", 5672)
        self.swallow = threading.Event()
        self.swallowed = 0

    def relay_back(self, server: socket.socket, client: socket.socket) -> None:
        """Broker to client: whole frames (type, channel, size, payload, 0xCE), minus the swallowed ones."""
        buffer = bytearray()
        try:
            while data := server.recv(65536):
                buffer += data
                out = bytearray()
                while len(buffer) >= 7:
                    end = 7 + struct.unpack_from(">I", buffer, 3)[0] + 1
                    if len(buffer) < end:
                        break
                    frame = bytes(buffer[:end])
                    del buffer[:end]
                    if frame[0] == 1 and frame[7:11] == CONSUME_OK and self.swallow.is_set():
                        self.swallowed += 1
                        continue
                    out += frame
                if out:
                    client.sendall(out)
        except OSError:
            pass
        finally:
            for s in (server, client):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


async def test_an_unanswered_basic_consume_times_out_and_the_input_reconnects(
    broker: Broker, make_app: MakeApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="event_router")
    exchange = await broker.topic_exchange()
    queue = broker.queue_name("unanswered")
    out = tmp_path / "out/events.jsonl"

    def errors() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name.startswith("event_router.inputs.broker") and r.getMessage() == "cannot consume from the broker"
        ]

    with SwallowingProxy() as proxy:
        proxy.swallow.set()
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        toml = input_toml(url, exchange, queue, extra='connect_timeout = "1s"\nreconnect_max = "500ms"')
        async with make_app(toml, ready=False) as app:
            plugin = app.config.inputs["broker"].plugin
            # two attempts: the input goes round its reconnect loop instead of waiting on the first one
            await until(lambda: len(errors()) >= 2, what="the input to give up on basic.consume twice", within=20)
            assert not plugin.is_ready()
            assert proxy.swallowed >= 2
            first = errors()[0]
            assert first.queue == queue  # type: ignore[attr-defined]
            assert first.step == "basic.consume"  # type: ignore[attr-defined]
            assert f"basic.consume on queue {queue!r}" in first.error  # type: ignore[attr-defined]
            assert "no answer from the broker within 1s" in first.error  # type: ignore[attr-defined]
            # the broker answers again: the input consumes without a restart
            proxy.swallow.clear()
            await until(plugin.is_ready, what="the input to consume once the broker answers", within=20)
            data = mail(1)
            with ConnectorPublisher() as publisher:
                publisher.publish_many(exchange, [("transport.messageReceived", orjson.dumps(data))])
            await until(lambda: read_jsonl(out), what="the event in the file", within=20)
            await anyio.sleep(0.2)
    assert [line["data"] for line in read_jsonl(out)] == [data]
    assert await broker.ready_count(queue) == (0, 0)
