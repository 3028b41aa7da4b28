"""Mode `pubsub` against real Redis servers: PUBLISH exactly as the Connector does, broken messages become
dead letters, a full spool pauses reading, and a Redis that is not there yet is waited for."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from event_router.testing import (
    DeadLetter,
    MakeApp,
    connector_events,
    dead_letters,
    example,
    free_port,
    http_receiver,
    unique_relationship,
)
from event_router_redis.testing import PrivateRedis, RedisKit, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.broker("redis")]

#: valid JSON that orjson parses (up to 1024 levels) but cannot write back (254): only the bytes can be kept
DEEP = b"[" * 300 + b"]" * 300


def ready(app: Any) -> bool:
    return bool(app.config.inputs["rd"].plugin.is_ready())


def publish(kit: RedisKit, *messages: tuple[str, bytes | dict[str, Any]]) -> None:
    """PUBLISH <namespace> <compact JSON of data>, like the Connector's RedisConnector."""
    with kit.client() as client:
        for channel, body in messages:
            client.publish(channel, body if isinstance(body, bytes) else orjson.dumps(body))


async def test_what_the_connector_publishes_arrives_as_events(make_app: MakeApp, redis_kit: RedisKit) -> None:
    kit = redis_kit
    message = kit.message()
    relationship, rel_trigger = unique_relationship()
    # The default patterns listen where the Connector publishes, so other tests' messages may show up:
    # lines are picked by what only this test sent.
    async with make_app(kit.config()) as app:
        await eventually(lambda: ready(app), what="the subscription")
        publish(
            kit,
            ("transport.messageReceived", message),
            (rel_trigger, relationship),
            ("runtime.modulesStarted", b"{}"),
        )
        got = await eventually(
            lambda: connector_events(kit.lines(), message["id"], rel_trigger, "runtime.modulesStarted"),
            what="the three events in the file",
        )
    assert got["message"]["data"] == message
    assert got["message"]["source"] == "rd"
    assert got["message"]["meta"] == {"channel": "transport.messageReceived", "pattern": "transport.*"}
    assert got[rel_trigger]["data"] == relationship
    assert got[rel_trigger]["meta"]["pattern"] == "consumption.*"
    assert got["runtime.modulesStarted"]["data"] == {}


async def test_broken_messages_become_dead_letters(make_app: MakeApp, redis_kit: RedisKit) -> None:
    kit = redis_kit
    invalid = kit.message()
    del invalid["createdBy"]
    marker = kit.message()
    tag = kit.tag
    async with make_app(kit.config('unknown_triggers = "dead-letter"')) as app:
        await eventually(lambda: ready(app), what="the subscription")
        publish(
            kit,
            ("transport.messageReceived", f"{{not json {tag}".encode()),
            ("transport.messageReceived", invalid),
            ("transport.messageReceived", b""),
            (f"transport.somethingNew{tag}", {"tag": tag}),
            ("runtime.modulesStarted", b""),
            ("transport.messageSent", DEEP),
            ("transport.messageReceived", marker),
        )
        await eventually(lambda: marker["id"] in kit.message_ids(), what="the marker event")

        def mine(dl: DeadLetter) -> bool:
            body = orjson.loads(dl.body)
            if dl.reason == "validation" and dl.trigger == "transport.messageReceived" and body["data"] is None:
                return True  # the empty message: nothing in it to tell whose it is
            if dl.trigger == "transport.messageSent":
                return bool(body.get("raw") == DEEP.decode())
            return tag.encode() in dl.body or invalid["id"].encode() in dl.body

        letters = [dl for dl in dead_letters(app.config.data_dir) if mine(dl)]
    assert sorted(dl.reason for dl in letters) == [
        "undecodable",
        "undecodable",
        "unknown_trigger",
        "validation",
        "validation",
    ], [(d.reason, d.error) for d in letters]
    # undecodable either way: the core fails on it (schema validation recursion) or cannot write it back
    assert any(dl.trigger == "transport.messageSent" for dl in letters), "kept as received"
    not_json = next(dl for dl in letters if dl.reason == "undecodable" and dl.trigger == "transport.messageReceived")
    assert (not_json.error or "").startswith("message is not valid JSON")
    assert not_json.trigger == "transport.messageReceived"
    kept = orjson.loads(not_json.body)
    assert kept["raw"] == f"{{not json {tag}"
    assert kept["meta"] == {"channel": "transport.messageReceived", "pattern": "transport.*"}
    errors = sorted(dl.error or "" for dl in letters if dl.reason == "validation")
    assert "createdBy" in errors[0] and errors[1].startswith('data: null is not of type "object"'), errors
    unknown = next(dl for dl in letters if dl.reason == "unknown_trigger")
    assert unknown.trigger == f"transport.somethingNew{tag}"
    no_data = [line for line in kit.lines() if line["trigger"] == "runtime.modulesStarted"]
    assert None in [line["data"] for line in no_data], "an empty message is an event without data"


async def test_spool_full_pauses_reading_until_there_is_room(make_app: MakeApp, redis_kit: RedisKit) -> None:
    kit = redis_kit
    channel = f"consumption.relationshipEvent.REL{uuid.uuid4().hex[:17].upper()}"
    relationship = example("transport.relationshipChanged")["data"]
    with http_receiver() as receiver:
        receiver.respond(503)
        sink = (
            f'[outputs.sink]\ntype = "http"\nurl = "{receiver.url}/hook"\n'
            'retry = { initial_backoff = "50ms", max_backoff = "200ms", max_attempts = 1000 }\n'
        )
        config = kit.config(f'patterns = ["{channel}"]', "max_pending_events = 4", outputs=sink, to='"sink"')
        async with make_app(config) as app:
            await eventually(lambda: ready(app), what="the subscription")
            publish(kit, *[(channel, {**relationship, "n": n}) for n in range(12)])
            await eventually(lambda: app.stats.get("spool_full_rejections"), what="the spool to fill")
            assert app.spool.depth <= 4
            receiver.respond(200)

            def delivered() -> dict[int, set[str]]:
                copies: dict[int, set[str]] = defaultdict(set)
                for body in receiver.bodies():
                    copies[body["data"]["n"]].add(body["id"])
                return copies

            await eventually(lambda: len(delivered()) == 12 and app.spool.depth == 0, what="every event delivered")
    assert all(len(ids) == 1 for ids in delivered().values())


async def test_starts_without_redis_and_connects_when_it_comes(
    make_app: MakeApp, tmp_path: Path, private_redis: Callable[..., PrivateRedis], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = private_redis(free_port(), password="s3cret-pw")
    kit = RedisKit(tmp_path, port=server.port, password="s3cret-pw")
    async with make_app(kit.config(), ready=False) as app:
        plugin = app.config.inputs["rd"].plugin
        assert not plugin.is_ready(), "nothing to be ready with yet"
        await eventually(
            lambda: [r for r in caplog.records if r.getMessage() == "cannot read from Redis"],
            what="a connection failure logged",
        )
        # /readyz says why, as the log does
        reason = app.readiness()["reasons"]["rd"]
        assert reason.startswith("cannot read from Redis: "), reason
        assert "Connection refused" in reason or "Connect call failed" in reason, reason
        assert "s3cret-pw" not in reason
        server.start()
        await eventually(plugin.is_ready, what="the connection once Redis is up")
        assert plugin.not_ready_reason() is None and "reasons" not in app.readiness()
        before = kit.message()
        publish(kit, ("transport.messageReceived", before))
        await eventually(lambda: before["id"] in kit.message_ids(), what="an event through the new connection")

        server.stop()
        await eventually(lambda: not plugin.is_ready(), what="readiness to drop with Redis")
        assert plugin.not_ready_reason(), "not ready, and why"
        server.start()
        await eventually(plugin.is_ready, what="the reconnection")
        after = kit.message()
        publish(kit, ("transport.messageReceived", after))
        await eventually(lambda: after["id"] in kit.message_ids(), what="an event after the reconnection")
    failure = next(r for r in caplog.records if r.getMessage() == "cannot read from Redis")
    assert failure.redis == f"redis://{'127.0.0.1'}:{server.port}/0"  # type: ignore[attr-defined]
    assert "Connection refused" in failure.error or "Connect call failed" in failure.error  # type: ignore[attr-defined]
    assert any(r.getMessage() == "lost the connection to Redis; reconnecting" for r in caplog.records)
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "s3cret-pw" not in logged
