"""READY=1 means the AMQP input consumes: its queue is declared and bound, so what the Connector publishes
from then on is kept by the broker. A broker that answers slowly (a proxy holding back its replies) widens
the time the input needs to set up; events published the moment the router says ready must all be stored."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson
import pytest

from event_router.testing import (
    RouterProcess,
    TcpProxy,
    archive_all,
    assert_ready_means_consuming,
    example,
    free_port,
    post,
    published_at_ready,
    read_jsonl,
    readyz,
    require_service,
    router_table,
    wait_for,
    webhook_input,
)
from event_router_amqp.testing import AMQP_URL, ConnectorPublisher, mail

pytestmark = pytest.mark.slow

COUNT = 50


def test_events_published_when_ready_are_all_stored(tmp_path: Path) -> None:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    admin = free_port()
    queue = f"er-test-ready-start-{uuid.uuid4().hex[:8]}"
    # a routing key of this test alone: other tests' messages on amq.topic do not reach this queue
    trigger = f"consumption.readyTest{uuid.uuid4().hex[:8]}"
    out = tmp_path / "var/events.jsonl"
    try:
        with TcpProxy("127.0.0.1", 5672, reply_delay=0.15) as proxy:
            config = tmp_path / "router.toml"
            config.write_text(f"""{router_table(admin)}[inputs.broker]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:{proxy.port}/"
exchange = "amq.topic"
queue = "{queue}"
queue_type = "classic"
bindings = ["{trigger}"]
unknown_triggers = "accept"
{archive_all()}""")

            def publish() -> None:
                with ConnectorPublisher(AMQP_URL) as publisher:
                    publisher.publish_many("amq.topic", [(trigger, orjson.dumps(mail(i))) for i in range(COUNT)])

            with published_at_ready(config, admin, "consuming from the broker", publish):
                wait_for(lambda: len(read_jsonl(out)) >= COUNT, timeout=20, what=f"{COUNT} events stored")
                assert sorted(line["data"]["id"] for line in read_jsonl(out)) == [mail(i)["id"] for i in range(COUNT)]
    finally:
        asyncio.run(_delete(queue))


def test_a_broker_down_at_start_is_waited_for_while_the_webhook_takes_events(tmp_path: Path) -> None:
    """The router runs without READY=1 while RabbitMQ cannot be reached: the webhook takes events, /readyz says
    which input is not consuming; once the broker answers, the router reports ready."""
    require_service("RabbitMQ", "127.0.0.1", 5672)
    port, admin = free_port(), free_port()
    queue = f"er-test-ready-down-{uuid.uuid4().hex[:8]}"
    try:
        with TcpProxy("127.0.0.1", 5672) as proxy:
            proxy.cut()
            config = tmp_path / "router.toml"
            config.write_text(f"""{router_table(admin)}{webhook_input(port, name="hook", api_key=None)}[inputs.broker]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:{proxy.port}/"
exchange = "amq.topic"
queue = "{queue}"
queue_type = "classic"
reconnect_max = "500ms"
{archive_all()}""")
            with RouterProcess(config, ready=False) as router:
                waiting = router.wait_log("waiting for inputs to consume before reporting ready")
                assert waiting["inputs"] == ["broker"]
                status, body, _ = post(f"http://127.0.0.1:{port}/events", example("transport.messageReceived"))
                assert status == 202, body
                router.wait_log("cannot consume from the broker", count=2)
                status, report = readyz(admin)
                assert (status, report["inputs"]) == (503, {"hook": True, "broker": False})
                assert "READY=1" not in router.poll_messages()
                assert not [r for r in router.log_records() if r.get("msg") == "router ready"]
                proxy.restore()
                router.wait_message("READY=1", timeout=20)
                assert_ready_means_consuming(router, admin, "consuming from the broker")
                wait_for(lambda: len(read_jsonl(tmp_path / "var/events.jsonl")) == 1, what="the webhook's event")
                assert router.terminate() == 0
    finally:
        asyncio.run(_delete(queue))


def test_sigterm_while_waiting_for_the_broker_stops_the_router_cleanly(tmp_path: Path) -> None:
    closed = free_port()
    config = tmp_path / "router.toml"
    config.write_text(f"""{router_table()}[inputs.broker]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:{closed}/"
exchange = "amq.topic"
queue = "never-declared"
{archive_all()}""")
    router = RouterProcess(config, ready=False).start()
    router.wait_log("cannot consume from the broker")
    assert router.terminate() == 0
    messages = [r.get("msg") for r in router.log_records()]
    assert "router stopped" in messages and "router ready" not in messages, messages
    assert "READY=1" not in router.messages and "STOPPING=1" in router.messages


async def _delete(queue: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)
