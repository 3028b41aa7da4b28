"""Fixtures of the AMQP plugin's tests: a real RabbitMQ on 127.0.0.1:5672, unique names, cleanup."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import pytest

from event_router.testing import require_service
from event_router_amqp.testing import AMQP_URL, Broker


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    admin = Broker(await aio_pika.connect(AMQP_URL, client_properties={"connection_name": "event-router tests"}))
    try:
        yield admin
    finally:
        await admin.cleanup()
        await admin.connection.close()
