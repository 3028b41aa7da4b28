"""/readyz follows the AMQP input's connection: RabbitMQ goes away (a real TCP cut), the router turns
unready and keeps taking webhook events; RabbitMQ comes back, ready again, and events flow."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from event_router.testing import RouterProcess, TcpProxy, free_port, require_service, wait_for

pytestmark = pytest.mark.slow


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_readyz_turns_unready_when_rabbitmq_goes_away(tmp_path: Path) -> None:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    admin = free_port()
    queue = f"er-test-ready-{uuid.uuid4().hex[:8]}"
    with TcpProxy("127.0.0.1", 5672) as proxy:
        config = tmp_path / "router.toml"
        config.write_text(f"""
[router]
data_dir = "./var"
[router.admin]
listen = "127.0.0.1:{admin}"
[inputs.broker]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:{proxy.port}/"
exchange = "amq.topic"
queue = "{queue}"
queue_type = "classic"
reconnect_max = "1s"
[outputs.archive]
type = "file"
path = "./var/events.jsonl"
[[routes]]
name = "all"
to = "archive"
""")
        with RouterProcess(config) as router:
            wait_for(lambda: readyz(admin)[0] == 200, what="ready while connected")
            proxy.cut()
            _, body = wait_for(lambda: (r := readyz(admin))[0] == 503 and r, what="unready after the cut")
            assert body["inputs"] == {"broker": False}
            assert body["spool"]["writable"] is True
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
            assert 'event_router_input_ready{input="broker"} 0.0' in metrics
            proxy.restore()
            wait_for(lambda: readyz(admin)[0] == 200, timeout=30, what="ready after RabbitMQ is back")
            router.terminate()
    # leave the broker as we found it
    import asyncio

    import aio_pika

    async def cleanup() -> None:
        connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(queue)

    asyncio.run(cleanup())
