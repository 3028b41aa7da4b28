"""The amqp input against a real RabbitMQ: Connector-format messages in, events out, every message acknowledged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aio_pika
import anyio
import orjson
import pytest

from event_router.testing import MakeApp, dead_letters, example, example_events, free_port, read_jsonl, until
from event_router_amqp.testing import (
    AMQP_URL,
    Broker,
    ConnectorPublisher,
    input_toml,
    mail,
    queue_totals,
)

pytestmark = [pytest.mark.anyio, pytest.mark.broker("rabbitmq")]


async def publish(exchange: str, messages: list[tuple[str, bytes]]) -> None:
    def run() -> None:
        with ConnectorPublisher(AMQP_URL) as publisher:
            publisher.publish_many(exchange, messages)

    await anyio.to_thread.run_sync(run)


async def test_connector_events_reach_the_file_output(broker: Broker, make_app: MakeApp, tmp_path: Path) -> None:
    exchange = await broker.topic_exchange()
    queue = broker.queue_name("in")
    relationship = example("transport.relationshipChanged")["data"]
    # as the Connector publishes: routing key = namespace, body = the data alone ({} for runtime events)
    sent = [(e["trigger"], e["data"]) for e in example_events()]
    sent.append((f"consumption.relationshipEvent.{relationship['id']}", relationship))
    assert ("runtime.modulesStarted", {}) in sent
    out = tmp_path / "out/events.jsonl"
    async with make_app(input_toml(AMQP_URL, exchange, queue)) as app:
        plugin = app.config.inputs["broker"].plugin
        await until(plugin.is_ready, what="the input to connect")
        await publish(exchange, [(trigger, orjson.dumps(data)) for trigger, data in sent])
        await until(lambda: len(read_jsonl(out)) >= len(sent), what="every event in the file")
    lines = read_jsonl(out)
    assert sorted((line["trigger"], orjson.dumps(line["data"])) for line in lines) == sorted(
        (trigger, orjson.dumps(data)) for trigger, data in sent
    )
    for line in lines:
        assert line["source"] == "broker"
        # a Connector message has no properties: nothing but the transport facts in meta
        assert line["meta"] == {
            "exchange": exchange,
            "routing_key": line["trigger"],
            "redelivered": False,
            "delivery_count": 0,
        }
    # the router is stopped: anything it had not acknowledged would be back in the queue
    assert await broker.ready_count(queue) == (0, 0)


async def test_default_exchange_delivers_to_the_queue_named_like_the_routing_key(
    broker: Broker, make_app: MakeApp, tmp_path: Path
) -> None:
    queue = broker.queue_name("default")
    out = tmp_path / "out/events.jsonl"
    toml = input_toml(AMQP_URL, "", queue, extra='queue_type = "classic"\nbindings = ["ignored.#"]')
    async with make_app(toml) as app:
        await until(app.config.inputs["broker"].plugin.is_ready, what="the input to connect")
        await publish("", [(queue, b'{"n": 1}'), ("some.other.queue", b'{"n": 2}')])
        await until(lambda: read_jsonl(out), what="the event")
        await anyio.sleep(0.3)
    (line,) = read_jsonl(out)
    assert line["trigger"] == queue
    assert line["data"] == {"n": 1}
    assert line["meta"]["exchange"] == ""
    assert await broker.ready_count(queue) == (0, 0)


async def test_malformed_messages_are_dead_lettered_and_acknowledged(
    broker: Broker, make_app: MakeApp, tmp_path: Path
) -> None:
    exchange = await broker.topic_exchange()
    queue = broker.queue_name("bad")
    sent = [
        ("transport.messageReceived", b"this is not JSON"),
        ("transport.messageReceived", b'{"id": "not a message id"}'),
        ("transport.messageReceived", b""),
        ("acme.somethingElse", b'{"a": 1}'),
        ("", b'{"a": 1}'),
        ("transport.messageReceived", orjson.dumps(mail(1))),
    ]
    out = tmp_path / "out/events.jsonl"
    toml = input_toml(AMQP_URL, exchange, queue, extra='unknown_triggers = "dead-letter"')
    async with make_app(toml) as app:
        await until(app.config.inputs["broker"].plugin.is_ready, what="the input to connect")
        await publish(exchange, sent)
        await until(lambda: len(dead_letters(app.config.data_dir)) >= 5 and read_jsonl(out), what="5 dead letters")
        await anyio.sleep(0.3)  # nothing else comes: no redelivery of what was dead-lettered
        found = dead_letters(app.config.data_dir)
    assert len(found) == 5
    by_error = {(dl.reason, dl.trigger): dl for dl in found}
    not_json = by_error["undecodable", "transport.messageReceived"]
    assert not_json.error is not None and not_json.error.startswith("body is not valid JSON")
    kept = orjson.loads(not_json.body)
    assert kept["raw"] == "this is not JSON"
    assert kept["source"] == "broker"
    assert kept["meta"]["routing_key"] == "transport.messageReceived"
    no_key = by_error["undecodable", None]
    assert no_key.error == "no routing key: cannot tell the event type"
    invalid = [dl for dl in found if dl.reason == "validation"]
    assert len(invalid) == 2  # the wrong object and the empty body (no data where a MessageDTO is required)
    assert {orjson.loads(dl.body)["data"] is None for dl in invalid} == {True, False}
    assert "no schema for trigger 'acme.somethingElse'" in (
        by_error["unknown_trigger", "acme.somethingElse"].error or ""
    )
    (good,) = read_jsonl(out)
    assert good["data"]["id"] == "MSG00000000000000001"
    assert await broker.ready_count(queue) == (0, 0)


async def test_names_that_are_not_utf8_do_not_stall_the_queue(
    broker: Broker, make_app: MakeApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """RabbitMQ delivers a routing key or header key that is not UTF-8 as it was published. pamqp alone fails
    on such a frame (gmr/pamqp#32): the connection drops, the broker delivers the message again, forever, and
    nothing behind it is consumed. The input dead-letters it instead (or makes an event of it when only a
    header key is odd), acknowledges it and goes on."""
    caplog.set_level(logging.INFO, logger="event_router")
    exchange = await broker.topic_exchange()
    queue = broker.queue_name("utf8")
    poison_key = b"transport.\xffbad"
    odd_headers: dict[str | bytes, Any] = {b"x-\xfe": b"v", "nested": {b"\xff\xfe": 1}}

    def send() -> None:
        with ConnectorPublisher(AMQP_URL) as publisher:
            publisher.publish(exchange, "transport.messageReceived", orjson.dumps(mail(1)))
            publisher.publish(exchange, poison_key, orjson.dumps(mail(2)))
            publisher.publish(exchange, "transport.messageReceived", orjson.dumps(mail(3)), headers=odd_headers)
            for seq in range(4, 8):
                publisher.publish(exchange, "transport.messageReceived", orjson.dumps(mail(seq)))
            publisher.flush()

    out = tmp_path / "out/events.jsonl"
    async with make_app(input_toml(AMQP_URL, exchange, queue)) as app:
        await until(app.config.inputs["broker"].plugin.is_ready, what="the input to connect")
        await anyio.to_thread.run_sync(send)
        await until(
            lambda: dead_letters(app.config.data_dir) and len(read_jsonl(out)) >= 6, what="6 events, 1 dead letter"
        )
        await anyio.sleep(0.5)  # time for a redelivery, if the message had been left unacknowledged
        found = dead_letters(app.config.data_dir)
        in_queue = queue_totals(queue)
    (poison,) = found
    assert (poison.reason, poison.error) == ("undecodable", "routing key is not UTF-8")
    assert poison.trigger == "transport.\\xffbad"
    kept = orjson.loads(poison.body)
    assert kept["meta"]["routing_key"] == poison_key.decode("utf-8", "backslashreplace")
    assert kept["meta"]["exchange"] == exchange
    assert orjson.loads(kept["raw"]) == mail(2)
    assert (kept["meta"]["redelivered"], kept["meta"]["delivery_count"]) == (False, 0)  # dead-lettered at once
    lines = read_jsonl(out)
    assert sorted(line["data"]["id"] for line in lines) == [f"MSG{seq:017d}" for seq in (1, 3, 4, 5, 6, 7)]
    assert all(not line["meta"]["redelivered"] for line in lines)
    (odd,) = [line for line in lines if "headers" in line["meta"]]
    assert odd["meta"]["headers"] == {"x-\\xfe": "v", "nested": {"\\xff\\xfe": 1}}
    # nothing left unacknowledged or requeued, and one connection all along
    assert in_queue == {"messages": 0, "messages_ready": 0, "messages_unacknowledged": 0}
    assert await broker.ready_count(queue) == (0, 0)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("event_router")]
    assert messages.count("consuming from the broker") == 1
    assert not {"lost the broker connection; reconnecting", "unexpected error while consuming; reconnecting"} & set(
        messages
    )


async def test_a_message_redelivered_too_often_is_dead_lettered(
    broker: Broker, make_app: MakeApp, tmp_path: Path
) -> None:
    exchange = await broker.topic_exchange()
    queue_name = broker.queue_name("poison")
    channel = await broker.fresh_channel()
    queue = await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
    await queue.bind(exchange, "#")
    await publish(exchange, [("transport.messageReceived", orjson.dumps(mail(1)))])
    # a consumer that fails on it six times, as a crashing or buggy consumer would
    for attempt in range(6):
        message = await queue.get(timeout=10)
        assert message.headers["x-delivery-count"] == attempt
        await message.nack(requeue=True)
    await channel.close()
    await publish(exchange, [("transport.messageReceived", orjson.dumps(mail(2)))])
    out = tmp_path / "out/events.jsonl"
    async with make_app(input_toml(AMQP_URL, exchange, queue_name, extra="max_redeliveries = 5")) as app:
        await until(lambda: dead_letters(app.config.data_dir) and read_jsonl(out), what="the dead letter and the event")
        await anyio.sleep(0.3)
        (poison,) = dead_letters(app.config.data_dir)
    assert poison.reason == "undecodable"
    assert poison.error == "redelivered 6 times"
    assert poison.trigger == "transport.messageReceived"
    kept = orjson.loads(poison.body)
    assert orjson.loads(kept["raw"])["id"] == "MSG00000000000000001"
    assert kept["meta"]["delivery_count"] == 6
    (good,) = read_jsonl(out)
    assert good["data"]["id"] == "MSG00000000000000002"
    assert await broker.ready_count(queue_name) == (0, 0)


async def test_the_router_starts_while_the_broker_is_unreachable(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there
    url = f"amqp://guest:s3cret-pw@127.0.0.1:{port}/"
    caplog.set_level(logging.INFO, logger="event_router")
    toml = input_toml(url, "connector", "q", extra='reconnect_max = "200ms"')
    async with make_app(toml, ready=False) as app:
        plugin = app.config.inputs["broker"].plugin
        assert not plugin.is_ready()
        await until(
            lambda: sum(r.getMessage() == "cannot consume from the broker" for r in caplog.records) >= 3,
            what="three failed connection attempts",
        )
        assert not plugin.is_ready()
        # /readyz says why, as the log does, without the password
        reason = app.readiness()["reasons"]["broker"]
        assert reason.startswith("cannot consume from the broker: "), reason
        assert "s3cret-pw" not in reason
    failures = [r for r in caplog.records if r.getMessage() == "cannot consume from the broker"]
    assert all(r.url == f"amqp://guest:***@127.0.0.1:{port}/" for r in failures)  # type: ignore[attr-defined]
    assert "Connect call failed" in failures[0].error or "refused" in failures[0].error.lower()  # type: ignore[attr-defined]
    for record in caplog.records:
        assert "s3cret-pw" not in str(record.__dict__)


async def test_a_router_connects_once_the_broker_has_the_exchange(
    broker: Broker, make_app: MakeApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The Connector's exchange may be created after the router starts: the input keeps trying."""
    caplog.set_level(logging.INFO, logger="event_router")
    exchange = f"er-test-late-{broker.token}"
    broker.exchanges.append(exchange)
    queue = broker.queue_name("late")
    out = tmp_path / "out/events.jsonl"
    async with make_app(input_toml(AMQP_URL, exchange, queue, extra='reconnect_max = "200ms"'), ready=False) as app:
        plugin = app.config.inputs["broker"].plugin
        await anyio.sleep(0.5)
        assert not plugin.is_ready()
        channel = await broker.fresh_channel()
        await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await until(plugin.is_ready, what="the input to connect")
        assert plugin.not_ready_reason() is None
        await publish(exchange, [("runtime.modulesStarted", b"{}")])
        await until(lambda: read_jsonl(out), what="the event")
    assert read_jsonl(out)[0]["data"] == {}
    (first, *_) = [r for r in caplog.records if r.getMessage() == "cannot consume from the broker"]
    assert first.error == (  # type: ignore[attr-defined]
        f"NOT_FOUND - no exchange '{exchange}' in vhost '/': "
        "create the exchange (the Connector does not either) or set declare_exchange = true"
    )
