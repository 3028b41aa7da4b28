"""Fixtures of the AMQP plugin's tests: a real RabbitMQ on 127.0.0.1:5672, unique names, cleanup; a private
RabbitMQ node for the tests that kill the broker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest

from event_router.testing import free_port, require_program, require_service
from event_router_amqp.testing import AMQP_URL, RABBITMQ_SERVER_SCRIPT, Broker, PrivateRabbitMQ

#: the test kit's fixtures, opted into (docs/plugins.md, "Testing a plugin")
pytest_plugins = ["event_router.testing.fixtures"]


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    admin = Broker(await aio_pika.connect(AMQP_URL, client_properties={"connection_name": "event-router tests"}))
    try:
        yield admin
    finally:
        await admin.cleanup()
        await admin.connection.close()


@pytest.fixture
def private_rabbitmq(tmp_path: Path) -> Iterator[PrivateRabbitMQ]:
    """A RabbitMQ node of this test's own (not started yet: `start()` takes seconds), stopped after the test."""
    script = require_program("rabbitmq-server", RABBITMQ_SERVER_SCRIPT)
    node = PrivateRabbitMQ(free_port(), base=tmp_path / "rabbitmq", script=script)
    yield node
    node.stop()
