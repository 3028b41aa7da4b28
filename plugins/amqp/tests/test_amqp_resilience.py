"""The amqp input when things go wrong: the broker drops connections or is killed, routers compete, the spool
fills up."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import aio_pika
import anyio
import orjson
import pytest

from event_router.testing import MakeApp, RouterProcess, dead_letters, http_receiver, read_jsonl, until
from event_router_amqp.errors import CLOSED_ERRORS, CONNECTION_ERRORS
from event_router_amqp.testing import (
    AMQP_URL,
    Broker,
    ConnectorPublisher,
    PrivateRabbitMQ,
    input_toml,
    mail,
    queue_totals,
    rabbitmqctl,
)

pytestmark = [pytest.mark.anyio, pytest.mark.broker("rabbitmq")]


def ids(path: Path) -> list[str]:
    return [line["data"]["id"] for line in read_jsonl(path)]


async def publish_paced(exchange: str, count: int, per_tick: int = 50, tick: float = 0.1) -> None:
    """Publish with confirms at a steady pace; after a lost connection, reconnect and publish the message again.

    One publish is in flight at a time, so the publisher itself adds at most one duplicate per lost connection.
    """
    connection: aio_pika.abc.AbstractConnection | None = None
    seq = 0
    try:
        while seq < count:
            try:
                if connection is None:
                    connection = await aio_pika.connect(AMQP_URL)
                    channel = await connection.channel(publisher_confirms=True)
                    target = await channel.get_exchange(exchange)
                for _ in range(min(per_tick, count - seq)):
                    await target.publish(aio_pika.Message(orjson.dumps(mail(seq))), "transport.messageReceived")
                    seq += 1
            except CLOSED_ERRORS:
                # aio-pika's is_closed can stay False after a server-side close: start over
                with anyio.move_on_after(2):
                    await _close_quietly(connection)
                connection = None
                await anyio.sleep(0.1)
                continue
            await anyio.sleep(tick)
    finally:
        await _close_quietly(connection)


async def _close_quietly(connection: aio_pika.abc.AbstractConnection | None) -> None:
    if connection is not None:
        with contextlib.suppress(*CLOSED_ERRORS):
            await connection.close()


@pytest.mark.slow
async def test_nothing_is_lost_when_the_broker_closes_the_connection(
    broker: Broker, make_app: MakeApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="event_router")
    exchange = await broker.topic_exchange()
    queue = broker.queue_name("restart")
    out = tmp_path / "out/events.jsonl"
    total, prefetch = 2000, 200
    toml = input_toml(AMQP_URL, exchange, queue, extra=f"prefetch = {prefetch}\nbatch_size = 100")
    async with make_app(toml) as app:
        plugin = app.config.inputs["broker"].plugin
        await until(plugin.is_ready, what="the input to connect")
        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_paced, exchange, total)
            await until(lambda: len(ids(out)) >= 300, what="300 events", within=60)
            # a real server-side close of every client connection (router and publisher alike)
            await anyio.to_thread.run_sync(rabbitmqctl, "close_all_connections", "event-router test")
            assert len(set(ids(out))) < total, "the close came too late to test anything"
        await until(lambda: len(set(ids(out))) >= total, what="every event after the reconnect", within=90)
        await anyio.sleep(0.5)
    got = ids(out)
    assert set(got) == {f"MSG{seq:017d}" for seq in range(total)}
    duplicates = len(got) - total
    # redelivered: at most what the router held unacknowledged (prefetch), plus one publish in doubt
    assert duplicates <= prefetch + 1, duplicates
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("event_router.inputs.broker")]
    assert "lost the broker connection; reconnecting" in messages
    assert messages.count("consuming from the broker") >= 2
    assert await broker.ready_count(queue) == (0, 0)


async def publish_confirmed(url: str, exchange: str, seqs: range, confirmed: set[int], per_tick: int = 50) -> int:
    """Publish `seqs` in order, `per_tick` at a time with their confirms awaited together, until the connection
    is lost. Returns the first seq not yet published; `confirmed` gets each seq the broker confirmed.

    Even seqs go persistent, odd ones transient as the Connector sends them: a quorum queue keeps both. What
    was in flight when the connection broke is not published again: like the Connector's (which neither
    waits for confirms nor retries), those messages may or may not be in the queue.
    """
    lost = False

    async def one(target: aio_pika.abc.AbstractExchange, seq: int) -> None:
        nonlocal lost
        mode = aio_pika.DeliveryMode.PERSISTENT if seq % 2 == 0 else aio_pika.DeliveryMode.NOT_PERSISTENT
        try:
            await target.publish(
                aio_pika.Message(orjson.dumps(mail(seq)), delivery_mode=mode), "transport.messageReceived"
            )
        except CLOSED_ERRORS:
            lost = True
        else:
            confirmed.add(seq)

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange)
        for start in range(seqs.start, seqs.stop, per_tick):
            end = min(start + per_tick, seqs.stop)
            async with anyio.create_task_group() as tg:
                for seq in range(start, end):
                    tg.start_soon(one, target, seq)
            if lost:
                return end
            await anyio.sleep(0.05)
        return seqs.stop
    finally:
        with anyio.move_on_after(2):
            await _close_quietly(connection)


@pytest.mark.slow
async def test_nothing_is_lost_when_the_broker_is_killed_and_restarted(
    private_rabbitmq: PrivateRabbitMQ, make_app: MakeApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="event_router")
    node = private_rabbitmq
    await anyio.to_thread.run_sync(node.start)
    admin = Broker(await aio_pika.connect(node.url), node.url)
    exchange = await admin.topic_exchange()
    queue = admin.queue_name("killed")  # the input declares it: a durable quorum queue, its default
    out = tmp_path / "out/events.jsonl"
    total, backlog, prefetch, per_tick = 2000, 1000, 200, 50
    confirmed: set[int] = set()
    resume = 0

    def logged(message: str) -> int:
        return sum(r.getMessage() == message for r in caplog.records if r.name.startswith("event_router.inputs.broker"))

    def stored() -> set[int]:
        return {int(i[3:]) for i in ids(out)}

    toml = input_toml(node.url, exchange, queue, extra=f'prefetch = {prefetch}\nbatch_size = 100\nreconnect_max = "1s"')
    async with make_app(toml) as app:
        plugin = app.config.inputs["broker"].plugin
        await until(plugin.is_ready, what="the input to declare its queue", within=30)
        # A clean restart first, for two reasons: the router must come back from one too, and RabbitMQ 3.10
        # records a new quorum queue's Raft member on disk only about 0.5 s after declaring it (ra's names.dets):
        # a crash before that brings the queue back without a leader, never to be consumed again. A queue that
        # has been through a restart is the one a production broker has.
        await anyio.to_thread.run_sync(node.stop)
        await until(lambda: not plugin.is_ready(), what="the input to see the broker stop")
        await anyio.to_thread.run_sync(node.start)
        await until(plugin.is_ready, what="the input to consume after the clean restart", within=60)
    # a backlog while the router is stopped: when the broker dies, the queue holds messages besides those
    # the router has unacknowledged
    assert await publish_confirmed(node.url, exchange, range(backlog), confirmed, per_tick=500) == backlog

    async def publish_until_killed() -> None:
        nonlocal resume
        resume = await publish_confirmed(node.url, exchange, range(backlog, total), confirmed, per_tick)

    async with make_app(toml) as app:
        plugin = app.config.inputs["broker"].plugin
        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_until_killed)
            # the router is consuming, and the publisher is connected and publishing
            await until(lambda: len(ids(out)) >= 300 and len(confirmed) > backlog, what="300 events", within=60)
            await anyio.to_thread.run_sync(node.kill)  # SIGKILL of the broker
        assert resume < total, "the kill came too late to test anything"
        assert len(stored()) < backlog, "the router had taken the whole backlog before the kill"
        await until(lambda: not plugin.is_ready(), what="the input to report the lost connection")
        # it keeps trying while nothing listens on the port
        await until(lambda: logged("cannot consume from the broker") >= 2, what="connection attempts", within=10)
        await anyio.to_thread.run_sync(node.start)  # the same node name and data directory
        await until(plugin.is_ready, what="the input to consume again", within=60)
        assert await publish_confirmed(node.url, exchange, range(resume, total), confirmed, per_tick) == total
        await until(lambda: confirmed <= stored(), what="every confirmed event", within=60)
        await anyio.sleep(0.5)
    got = ids(out)
    in_doubt = set(range(total)) - confirmed
    # the broker died with at most one tick of publishes unconfirmed; those may or may not have been kept
    assert len(in_doubt) <= per_tick, len(in_doubt)
    assert confirmed <= stored() <= set(range(total))
    # what the router held unacknowledged when the broker died comes again, marked: at most prefetch messages
    # (a quorum queue frees a prefetch slot only once the acknowledgement is in its log); those the router had
    # stored already are the duplicates
    lines = read_jsonl(out)
    redelivered = [line["data"]["id"] for line in lines if line["meta"]["redelivered"]]
    assert len(redelivered) <= prefetch, len(redelivered)
    duplicates = len(got) - len(set(got))
    assert duplicates <= prefetch, duplicates
    first_deliveries = [line["data"]["id"] for line in lines if not line["meta"]["redelivered"]]
    assert len(first_deliveries) == len(set(first_deliveries))
    assert logged("lost the broker connection; reconnecting") == 2  # the clean restart, then the kill
    assert logged("consuming from the broker") == 4  # two router runs, each connecting twice
    assert await admin.ready_count(queue) == (0, 0)
    await _close_quietly(admin.connection)


def router_config(base: Path, exchange: str, queue: str) -> Path:
    base.mkdir()
    (base / "router.toml").write_text(input_toml(AMQP_URL, exchange, queue, output="./events.jsonl"))
    return base / "router.toml"


@pytest.mark.slow
async def test_two_routers_share_one_quorum_queue(broker: Broker, tmp_path: Path) -> None:
    exchange = await broker.topic_exchange()
    queue = broker.queue_name("shared")
    total = 2000
    with (
        RouterProcess(router_config(tmp_path / "a", exchange, queue)) as first,
        RouterProcess(router_config(tmp_path / "b", exchange, queue)) as second,
    ):
        await until(lambda: _consumers(broker, queue), what="both routers consuming")

        def run() -> None:
            # with confirms: from here on the quorum queue holds every message, so an event the files lack
            # is the routers' doing, not the publisher's
            with ConnectorPublisher(AMQP_URL, confirms=True) as publisher:
                publisher.publish_many(
                    exchange, (("transport.messageReceived", orjson.dumps(mail(seq))) for seq in range(total))
                )

        await anyio.to_thread.run_sync(run)
        a, b = tmp_path / "a/events.jsonl", tmp_path / "b/events.jsonl"
        # when the union last grew, and to what: tells a stalled router from a slow one if the wait times out
        progress = [0, anyio.current_time()]

        def all_in() -> bool:
            union = len(set(ids(a)) | set(ids(b)))
            if union > progress[0]:
                progress[:] = [union, anyio.current_time()]
            return union >= total

        try:
            await until(all_in, what="every event in one of the files", within=60)
        except AssertionError as exc:
            idle = anyio.current_time() - progress[1]
            raise AssertionError(
                f"{exc}; no new event for the last {idle:.1f}s; {_shared_queue_state(queue, total, first, second)}"
            ) from None
        assert first.terminate() == 0
        assert second.terminate() == 0
    got_a, got_b = ids(a), ids(b)
    assert set(got_a) | set(got_b) == {f"MSG{seq:017d}" for seq in range(total)}
    assert len(got_a) + len(got_b) == total  # nothing redelivered: each event went to exactly one router
    assert min(len(got_a), len(got_b)) >= total // 10, (len(got_a), len(got_b))
    assert await broker.ready_count(queue) == (0, 0)


def _shared_queue_state(queue: str, total: int, *routers: RouterProcess) -> str:
    """What a router that lacks events has in its file and spool, what the broker still holds and what the
    routers logged about the broker: enough to tell a lost event from a slow or disconnected router."""
    parts = []
    seen: set[str] = set()
    for router in routers:
        base = router.config.parent
        got = ids(base / "events.jsonl")
        seen.update(got)
        spool = base / "var/spool.db"
        letters = [d.reason for d in dead_letters(spool.parent)] if spool.exists() else []
        notes = [
            f"{r.get('level')} {r.get('msg')} {r.get('error', '')}".strip()
            for r in router.log_records()
            if r.get("level") in ("warning", "error", "critical")
        ]
        parts.append(
            f"{base.name}: {len(got)} in its file, dead letters {letters[:3]} ({len(letters)}), log {notes[:5]}"
        )
    missing = sorted({f"MSG{seq:017d}" for seq in range(total)} - seen)
    columns = ("name", "messages_ready", "messages_unacknowledged", "consumers")
    try:
        rows = json.loads(rabbitmqctl("list_queues", "-q", "--formatter", "json", *columns))
        held: object = next(({k: v for k, v in r.items() if k != "name"} for r in rows if r["name"] == queue), None)
    except Exception as exc:  # the report must not hide the failure it describes
        held = repr(exc)
    return f"{len(missing)} missing (first {missing[:3]}); the queue holds {held}; " + "; ".join(parts)


async def test_the_publisher_with_confirms_reports_what_the_broker_refused(broker: Broker) -> None:
    """The shared-queue test trusts `confirms`: a message the broker did not take must not pass unnoticed."""
    exchange = await broker.topic_exchange()
    channel = await broker.fresh_channel()
    full = await channel.declare_queue(
        broker.queue_name("full"), durable=True, arguments={"x-max-length": 5, "x-overflow": "reject-publish"}
    )
    await full.bind(exchange, "#")
    await channel.close()

    def run(confirms: bool) -> None:
        with ConnectorPublisher(AMQP_URL, confirms=confirms) as publisher:
            publisher.publish_many(
                exchange, (("transport.messageReceived", orjson.dumps(mail(seq))) for seq in range(10))
            )

    await anyio.to_thread.run_sync(run, False)  # control: without confirms the refusal goes unseen
    with pytest.raises(RuntimeError, match="the broker refused"):
        await anyio.to_thread.run_sync(run, True)
    assert (await broker.ready_count(full.name))[0] == 5


async def _consumers(broker: Broker, queue: str) -> bool:
    try:
        return (await broker.ready_count(queue))[1] == 2
    except CONNECTION_ERRORS:  # not declared yet
        return False


async def test_a_full_spool_stops_consumption_until_it_has_room(
    broker: Broker, make_app: MakeApp, tmp_path: Path
) -> None:
    exchange = await broker.topic_exchange()
    queue = broker.queue_name("full")
    total, limit = 60, 10
    with http_receiver() as receiver:
        receiver.respond(503)
        toml = f"""
[router]
data_dir = "./var"
max_pending_events = {limit}
[inputs.broker]
type = "amqp"
url = "{AMQP_URL}"
exchange = "{exchange}"
queue = "{queue}"
prefetch = 20
batch_size = 5
[outputs.crm]
type = "http"
url = "{receiver.url}/events"
retry = {{ max_attempts = 100000, max_age = 0, initial_backoff = "20ms", max_backoff = "100ms" }}
[[routes]]
name = "everything"
to = ["crm"]
"""
        async with make_app(toml) as app:
            await until(app.config.inputs["broker"].plugin.is_ready, what="the input to connect")

            def run() -> None:
                with ConnectorPublisher(AMQP_URL) as publisher:
                    publisher.publish_many(
                        exchange, (("transport.messageReceived", orjson.dumps(mail(seq))) for seq in range(total))
                    )

            await anyio.to_thread.run_sync(run)
            await until(lambda: app.spool.depth == limit, what="a full spool")
            # everything the spool did not take is still the broker's: ready, or held unacknowledged
            await until(
                lambda: queue_totals(queue)["messages"] == total - limit, what="the broker to hold the rest", within=30
            )
            await anyio.sleep(2.5)  # the input retried (retry_after is 1 s) and still took nothing
            assert app.spool.depth == limit
            assert queue_totals(queue)["messages"] == total - limit
            assert len(receiver.requests) > limit  # the output kept failing meanwhile
            with receiver.lock:  # from this request on the receiver answers 200
                receiver.script = [(200, {})]
                switch = len(receiver.requests)

            def delivered() -> set[str]:
                return {b["data"]["id"] for b in receiver.bodies()[switch:]}

            await until(lambda: len(delivered()) >= total, what="every event delivered", within=60)
            await until(lambda: app.spool.depth == 0, what="an empty spool")
    assert delivered() == {f"MSG{seq:017d}" for seq in range(total)}
    assert await broker.ready_count(queue) == (0, 0)
