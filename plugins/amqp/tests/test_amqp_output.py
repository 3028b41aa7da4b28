"""The amqp output against a real RabbitMQ: what it publishes, unroutable messages, lost connections."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aio_pika
import anyio
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from event_router.testing import MakeApp, dead_letters, example, free_port, post, until
from event_router_amqp.testing import AMQP_URL, Broker, mail, rabbitmqctl

pytestmark = [pytest.mark.anyio, pytest.mark.broker("rabbitmq")]


def output_toml(port: int, exchange: str, extra: str = "") -> str:
    return f"""
[router]
data_dir = "./var"
[inputs.hook]
type = "webhook"
listen = "127.0.0.1:{port}"
[outputs.bus]
type = "amqp"
url = "{AMQP_URL}"
exchange = "{exchange}"
retry = {{ max_attempts = 1000, initial_backoff = "50ms", max_backoff = "200ms" }}
{extra}
[[routes]]
name = "to the bus"
to = ["bus"]
"""


async def send(port: int, trigger: str, data: Any) -> str:
    body = {"trigger": trigger} if data is None else {"trigger": trigger, "data": data}
    status, answer, _ = await anyio.to_thread.run_sync(post, f"http://127.0.0.1:{port}/events", body)
    assert status == 202, answer
    event_id: str = answer["id"]
    return event_id


async def bound_queue(broker: Broker, exchange: str, binding: str) -> AbstractQueue:
    channel = await broker.fresh_channel()
    queue = await channel.declare_queue(broker.queue_name("out"), durable=True)
    await queue.bind(exchange, binding)
    return queue


async def take(queue: AbstractQueue, count: int) -> list[AbstractIncomingMessage]:
    got: list[AbstractIncomingMessage] = []

    async def more() -> bool:
        message = await queue.get(fail=False)
        if message is not None:
            await message.ack()
            got.append(message)
        return len(got) >= count

    await until(more, what=f"{count} messages on the queue")
    return got


async def test_published_message(broker: Broker, make_app: MakeApp, tmp_path: Path) -> None:
    exchange = await broker.topic_exchange("out")
    queue = await bound_queue(broker, exchange, "connector.transport.#")
    port = free_port()
    async with make_app(output_toml(port, exchange, 'routing_key = "connector.{{trigger}}"')):
        data = example("transport.messageReceived")["data"]
        event_id = await send(port, "transport.messageReceived", data)
        (message,) = await take(queue, 1)
    assert message.routing_key == "connector.transport.messageReceived"
    assert message.message_id == event_id
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.content_type == "application/json"
    assert message.headers == {"x-event-trigger": "transport.messageReceived", "x-event-id": event_id}
    body = orjson.loads(message.body)
    assert body["id"] == event_id
    assert body["trigger"] == "transport.messageReceived"
    assert body["source"] == "hook"
    assert body["data"] == data


async def test_a_batch_of_deliveries(broker: Broker, make_app: MakeApp, tmp_path: Path) -> None:
    exchange = await broker.topic_exchange("out")
    queue = await bound_queue(broker, exchange, "#")
    port = free_port()
    async with make_app(output_toml(port, exchange)), anyio.create_task_group() as tg:
        for seq in range(40):
            tg.start_soon(send, port, "transport.messageReceived", mail(seq))
    messages = await take(queue, 40)
    assert sorted(orjson.loads(m.body)["data"]["id"] for m in messages) == [f"MSG{seq:017d}" for seq in range(40)]


async def test_unroutable_message_is_dead_lettered(broker: Broker, make_app: MakeApp, tmp_path: Path) -> None:
    exchange = await broker.topic_exchange("out")
    queue = await bound_queue(broker, exchange, "transport.#")
    port = free_port()
    async with make_app(output_toml(port, exchange)) as app:
        event_id = await send(port, "runtime.modulesStarted", None)
        routed = await send(port, "transport.messageReceived", mail(1))
        (message,) = await take(queue, 1)
        (dead,) = await until(lambda: dead_letters(app.config.data_dir), what="the dead letter")
    assert message.message_id == routed
    assert dead.event_id == event_id
    assert dead.output == "bus"
    assert dead.reason == "permanent"
    assert dead.attempts == 1  # returned by the broker: trying again cannot help
    assert (dead.error or "").startswith(
        f"unroutable: no queue bound for routing key 'runtime.modulesStarted' on exchange '{exchange}'"
    )


@pytest.mark.slow
async def test_lost_connection_is_made_again(
    broker: Broker, make_app: MakeApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="event_router")
    exchange = await broker.topic_exchange("out")
    queue_name = (await bound_queue(broker, exchange, "#")).name
    port = free_port()
    async with make_app(output_toml(port, exchange)):
        first = await send(port, "transport.messageReceived", mail(1))
        await until(lambda: _has_message(broker, queue_name), what="the first message")
        await anyio.to_thread.run_sync(rabbitmqctl, "close_all_connections", "event-router test")
        second = await send(port, "transport.messageReceived", mail(2))
        channel = await broker.fresh_channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        messages = await take(queue, 2)
    assert [m.message_id for m in messages] == [first, second]
    logged = [r.getMessage() for r in caplog.records if r.name == "event_router.outputs.bus"]
    assert logged.count("connected to the broker") == 2


async def _has_message(broker: Broker, queue: str) -> bool:
    return (await broker.ready_count(queue))[0] >= 1


async def test_a_missing_exchange_is_retried_until_it_exists(broker: Broker, make_app: MakeApp, tmp_path: Path) -> None:
    exchange = f"er-test-later-{broker.token}"
    broker.exchanges.append(exchange)
    port = free_port()
    async with make_app(output_toml(port, exchange)) as app:
        event_id = await send(port, "transport.messageReceived", mail(1))
        await until(lambda: _retried(app), what="a failed attempt")
        # the exchange must route from its first moment on (a retry between declaring it and binding a queue
        # would be returned as unroutable): its alternate exchange, with the queue, exists before it
        alternate = await broker.topic_exchange("alternate")
        queue = await bound_queue(broker, alternate, "#")
        channel = await broker.fresh_channel()
        await channel.declare_exchange(
            exchange, aio_pika.ExchangeType.TOPIC, durable=True, arguments={"alternate-exchange": alternate}
        )
        (message,) = await take(queue, 1)
        await until(lambda: app.spool.depth == 0, what="the delivery to finish")
    assert message.message_id == event_id
    assert dead_letters(app.config.data_dir) == []


def _retried(app: Any) -> bool:
    """The spool records a failed attempt that the missing exchange explains."""
    backlogs = app.spool.status().backlogs.values()
    return any(backlog.retrying and "NOT_FOUND" in (backlog.last_error or "") for backlog in backlogs)
