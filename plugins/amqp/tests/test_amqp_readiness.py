"""/readyz follows the AMQP input's connection: RabbitMQ goes away (a real TCP cut), the router turns
unready and keeps taking webhook events; RabbitMQ comes back, ready again, and events flow. Why the input
is not ready (a missing exchange) is in /readyz, the console and `event-router status`."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from markupsafe import escape

from event_router.testing import (
    RouterProcess,
    TcpProxy,
    archive_all,
    free_port,
    readyz,
    require_service,
    router_table,
    run_cli,
    wait_for,
    webhook_input,
)

pytestmark = pytest.mark.slow


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
            assert body["reasons"]["broker"], "not ready, and why"
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


def test_a_missing_exchange_is_the_reason_in_readyz_the_console_and_status(tmp_path: Path) -> None:
    """The exchange the input binds to does not exist (the Connector does not create it): /readyz, the
    console's overview and `event-router status` all say why the input is not ready, as the log does."""
    require_service("RabbitMQ", "127.0.0.1", 5672)
    admin, port = free_port(), free_port()
    suffix = uuid.uuid4().hex[:8]
    exchange, queue = f"er-test-missing-{suffix}", f"er-test-missing-{suffix}"
    config = tmp_path / "router.toml"
    config.write_text(f"""{router_table(admin)}{webhook_input(port, name="hook", api_key=None)}[inputs.broker]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:5672/"
exchange = "{exchange}"
queue = "{queue}"
queue_type = "classic"
reconnect_max = "1s"
{archive_all()}""")
    try:
        with RouterProcess(config, ready=False) as router:
            _, body = wait_for(
                lambda: (r := readyz(admin))[0] == 503 and "broker" in r[1].get("reasons", {}) and r,
                what="/readyz to give the broker input's reason",
            )
            assert body["inputs"] == {"hook": True, "broker": False}
            reason = body["reasons"]["broker"]
            assert reason.startswith("cannot consume from the broker: "), reason
            assert f"no exchange '{exchange}'" in reason and "set declare_exchange = true" in reason, reason
            assert "hook" not in body["reasons"]
            # the log says the same
            router.wait_log("cannot consume from the broker")

            page = urllib.request.urlopen(f"http://127.0.0.1:{admin}/console/", timeout=5).read().decode()
            assert "not ready: broker" in page
            assert "set declare_exchange = true" in page and escape(f"no exchange '{exchange}'") in page

            status = run_cli("status", "--json", "-c", str(config))
            assert status.returncode == 0, status.stderr
            seen = json.loads(status.stdout)["router"]
            assert seen["admin"] == f"127.0.0.1:{admin}" and seen["ready"] is False and seen["error"] is None
            assert seen["inputs"]["hook"] == {"ready": True, "reason": None}
            assert seen["inputs"]["broker"]["ready"] is False
            assert "set declare_exchange = true" in seen["inputs"]["broker"]["reason"]

            text = run_cli("status", "-c", str(config))
            assert text.returncode == 0, text.stderr
            lines = text.stdout.splitlines()
            assert f"router on 127.0.0.1:{admin}: not ready" in lines, text.stdout
            header = next(line for line in lines if line.startswith("INPUT "))
            broker = next(line for line in lines if line.startswith("broker "))
            assert broker[header.index("READY") :].startswith("no ")
            assert broker[header.index("REASON") :].startswith("cannot consume from the broker: ")
            assert broker.endswith("set declare_exchange = true"), broker
            hook = next(line for line in lines if line.startswith("hook "))
            assert hook[header.index("READY") :].split() == ["yes", "-"]
            router.terminate()
        # no router runs: status says it cannot know the inputs, and why
        stopped = run_cli("status", "-c", str(config))
        assert stopped.returncode == 0, stopped.stderr
        assert f"inputs: unknown: no router answers on 127.0.0.1:{admin}" in stopped.stdout, stopped.stdout
    finally:
        asyncio.run(_delete_queue(queue))


async def _delete_queue(queue: str) -> None:
    import aio_pika

    connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)
