"""The pubsub input in-process against a real emulator: Connector-shaped messages in, file lines out."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from gcloud.aio.pubsub import PubsubMessage

from event_router.testing import (
    DeadLetter,
    MakeApp,
    dead_letters,
    example,
    example_events,
    free_port,
    http_receiver,
    read_jsonl,
)
from event_router_pubsub.testing import PubSubAdmin

pytestmark = [pytest.mark.anyio, pytest.mark.broker("pubsub")]

#: the types of conftest.py's `until` and `router_toml` fixtures
Until = Callable[..., Awaitable[Any]]
RouterToml = Callable[..., str]

REL_ID = "RELabcdefghij0123456"
#: longer than the subscriptions' 10 s ack deadline: anything left unacknowledged would be back by then
PAST_DEADLINE = 13


def lines(tmp_path: Path) -> list[dict[str, Any]]:
    return read_jsonl(tmp_path / "out/events.jsonl")


def connector_events() -> list[dict[str, Any]]:
    """Every example event, plus a 3-segment relationshipEvent and runtime.modulesStarted with `{}` data."""
    relationship = example("transport.relationshipChanged")["data"]
    events = [e for e in example_events() if e["trigger"] != "runtime.modulesStarted"]
    events.append({"trigger": f"consumption.relationshipEvent.{relationship['id']}", "data": relationship})
    events.append({"trigger": "runtime.modulesStarted", "data": {}})  # brokers send {} for no-data events
    return events


async def test_connector_events_reach_the_file(
    until: Until, make_app: MakeApp, pubsub: PubSubAdmin, router_toml: RouterToml, tmp_path: Path
) -> None:
    topic = await pubsub.create_topic()
    subscription = await pubsub.create_subscription(topic)
    events = connector_events()
    async with make_app(router_toml(subscription)) as app:
        await until(app.config.inputs["connector"].plugin.is_ready, what="the input to connect")
        ids = await pubsub.publish(topic, events)
        got = await until(lambda: len(lines(tmp_path)) >= len(events) and lines(tmp_path), what="all events")
    assert len(got) == len(events)
    by_id = {line["meta"]["message_id"]: line for line in got}
    for message_id, sent in zip(ids, events, strict=True):
        line = by_id[message_id]
        assert line["trigger"] == sent["trigger"]
        assert line["source"] == "connector"
        assert line["data"] == sent["data"]
        meta = line["meta"]
        assert meta["attributes"] == {"namespace": sent["trigger"]}
        assert meta["subscription"] == subscription
        assert meta["publish_time"].endswith("Z")
        assert "delivery_attempt" not in meta  # only with a dead-letter policy on the subscription
    assert by_id[ids[-1]]["data"] == {}
    assert by_id[ids[-2]]["trigger"].count(".") == 2


async def test_message_without_data_is_an_event_without_data(
    until: Until, make_app: MakeApp, pubsub: PubSubAdmin, router_toml: RouterToml, tmp_path: Path
) -> None:
    topic = await pubsub.create_topic()
    subscription = await pubsub.create_subscription(topic)
    async with make_app(router_toml(subscription)):
        await pubsub.publish_raw(topic, [PubsubMessage(b"", namespace="runtime.modulesStarted")])
        (line,) = await until(lambda: lines(tmp_path), what="the event")
    assert line["trigger"] == "runtime.modulesStarted"
    assert line["data"] is None


async def test_malformed_messages_are_dead_lettered_and_acked(
    until: Until, make_app: MakeApp, pubsub: PubSubAdmin, router_toml: RouterToml, tmp_path: Path
) -> None:
    topic = await pubsub.create_topic()
    subscription = await pubsub.create_subscription(topic)
    invalid = example("transport.messageReceived")["data"]
    del invalid["createdBy"]
    messages = [
        PubsubMessage(orjson.dumps(invalid)),  # no namespace attribute
        PubsubMessage(b"{not json", namespace="transport.messageReceived"),
        PubsubMessage(orjson.dumps(invalid), namespace="transport.messageReceived"),  # wrong schema
        PubsubMessage(b"", namespace="transport.messageReceived"),  # empty body: no data for a data event
        PubsubMessage(b"{}", namespace="custom.somethingElse"),  # unknown trigger
        PubsubMessage(
            orjson.dumps(example("transport.messageReceived")["data"]), namespace="transport.messageReceived"
        ),
    ]
    toml = router_toml(subscription, input_extra='unknown_triggers = "dead-letter"')
    async with make_app(toml) as app:
        ids = await pubsub.publish_raw(topic, messages)
        await until(
            lambda: len(dead_letters(app.config.data_dir)) >= 5 and lines(tmp_path), what="5 dead letters and 1 event"
        )
        # acknowledged, so nothing comes back once the deadline has passed
        await anyio.sleep(PAST_DEADLINE)
        letters = dead_letters(app.config.data_dir)
        assert len(lines(tmp_path)) == 1
    assert len(letters) == 5, [(d.reason, d.error) for d in letters]
    by_message = {_message_id(d): d for d in letters}
    assert set(by_message) == set(ids[:5])
    no_namespace, not_json, wrong_schema, empty, unknown = (by_message[i] for i in ids[:5])
    assert (no_namespace.reason, no_namespace.error, no_namespace.trigger) == (
        "undecodable",
        "no namespace attribute",
        None,
    )
    assert orjson.loads(orjson.loads(no_namespace.body)["raw"]) == invalid  # the bytes are kept
    assert not_json.reason == "undecodable"
    assert (not_json.error or "").startswith("message data is not valid JSON")
    assert not_json.trigger == "transport.messageReceived"
    assert wrong_schema.reason == "validation"
    assert "createdBy" in (wrong_schema.error or "")
    assert empty.reason == "validation"
    assert unknown.reason == "unknown_trigger"


def _message_id(letter: DeadLetter) -> str:
    body = orjson.loads(letter.body)
    meta = body["meta"]  # a rejected message's meta, or the dead-lettered event's
    return str(meta["message_id"])


async def test_stopping_loses_nothing(
    until: Until, make_app: MakeApp, pubsub: PubSubAdmin, router_toml: RouterToml, tmp_path: Path
) -> None:
    """A stop abandons the pull in progress; the emulator may hand the next message to that dead pull.

    Nothing is lost: the message was never acknowledged, so it comes back after the ack deadline.
    """
    topic = await pubsub.create_topic()
    subscription = await pubsub.create_subscription(topic)
    toml = router_toml(subscription)
    async with make_app(toml):
        await pubsub.publish(topic, [example("transport.messageReceived")])
        await until(lambda: lines(tmp_path), what="the first event")
        await anyio.sleep(0.5)  # the input is back in a long pull when it is stopped
    (published,) = await pubsub.publish(topic, [example("consumption.incomingRequestReceived")])
    async with make_app(toml):
        got = await until(lambda: len(lines(tmp_path)) >= 2 and lines(tmp_path), within=45, what="second event")
        await anyio.sleep(1)
        got = lines(tmp_path)
    assert [line["trigger"] for line in got] == ["transport.messageReceived", "consumption.incomingRequestReceived"]
    assert got[1]["meta"]["message_id"] == published


async def test_full_spool_holds_messages_unacknowledged(
    until: Until, pubsub: PubSubAdmin, tmp_path: Path, make_app: MakeApp
) -> None:
    topic = await pubsub.create_topic()
    subscription = await pubsub.create_subscription(topic)
    events = [example("transport.messageReceived")] * 6
    with http_receiver() as receiver:
        receiver.respond(503)
        toml = f"""
[router]
data_dir = "{tmp_path}/var"
max_pending_events = 3
[inputs.connector]
type = "pubsub"
project = "test-project"
subscription = "{subscription}"
emulator_host = "{pubsub.host}"
ack_deadline = "10s"
[outputs.crm]
type = "http"
url = "{receiver.url}/events"
retry = {{ max_attempts = 1000, initial_backoff = "50ms", max_backoff = "200ms" }}
[[routes]]
name = "all"
to = ["crm"]
"""
        async with make_app(toml) as app:
            ids = await pubsub.publish(topic, events)
            await until(lambda: app.spool.depth == 3, what="the spool to fill")
            # held past the subscription's deadline: extended, so not handed out again
            await anyio.sleep(PAST_DEADLINE)
            assert app.spool.depth == 3
            held = app.spool.fetch_due("crm", app.spool.clock.now() + 3600, 100, ())
            stored = {orjson.loads(row.body)["meta"]["message_id"] for row in held}
            assert len(stored) == 3
        # The stop gave the held messages back: exactly those that were not stored are available, none acked.
        pending = await pubsub.pull_now(subscription)
        assert {m["message"]["messageId"] for m in pending} == set(ids) - stored
        # our own pull leased them: give them back for the router's next start
        await pubsub.nack(subscription, [m["ackId"] for m in pending])

        receiver.respond(200)
        with receiver.lock:
            receiver.requests.clear()  # the refused attempts while the spool was full
        async with make_app(toml):
            await until(lambda: len(receiver.requests) >= 6, what="every event delivered")
            await anyio.sleep(PAST_DEADLINE)
        delivered = [r.json()["meta"]["message_id"] for r in receiver.requests]
    assert sorted(delivered) == sorted(ids), "each message stored once: nothing lost, none redelivered"


async def test_router_starts_while_pubsub_is_unreachable(
    until: Until, make_app: MakeApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    toml = f"""
[router]
data_dir = "{tmp_path}/var"
[inputs.connector]
type = "pubsub"
project = "test-project"
subscription = "enmeshed-events"
emulator_host = "{closed}"
reconnect_max = "1s"
"""
    caplog.set_level(logging.WARNING)
    async with make_app(toml, ready=False) as app:
        plugin = app.config.inputs["connector"].plugin
        await until(lambda: _records(caplog, "cannot pull"), what="a log of the failure")
        assert not plugin.is_ready()
        # /readyz says why, as the log does
        reason = app.readiness()["reasons"]["connector"]
        assert reason.startswith("cannot pull from subscription projects/test-project/subscriptions/enmeshed-events: ")
        assert "Cannot connect" in reason, reason
        await anyio.sleep(2.5)  # backs off and tries again, still logging, still not ready
        assert not plugin.is_ready()
    failures = _records(caplog, "cannot pull")
    assert len(failures) >= 2
    assert failures[0].endpoint == f"emulator {closed}"
    assert failures[0].subscription == "projects/test-project/subscriptions/enmeshed-events"
    assert "Cannot connect" in failures[0].error


async def test_missing_subscription_is_reported_until_created(
    until: Until,
    make_app: MakeApp,
    pubsub: PubSubAdmin,
    router_toml: RouterToml,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = await pubsub.create_topic()
    name = pubsub.unique("later")
    caplog.set_level(logging.INFO)
    async with make_app(router_toml(name, input_extra='reconnect_max = "1s"'), ready=False) as app:
        plugin = app.config.inputs["connector"].plugin
        (first, *_) = await until(lambda: _records(caplog, "cannot pull"), what="a log of the missing subscription")
        assert "does not exist" in first.error
        assert "before starting the Connector" in first.error
        assert not plugin.is_ready()
        reason = plugin.not_ready_reason()
        assert reason is not None and first.error in reason, reason
        await pubsub.create_subscription(topic, name=name)
        await until(plugin.is_ready, what="the input to become ready")
        assert plugin.not_ready_reason() is None
        await pubsub.publish(topic, [example("transport.messageReceived")])
        (line,) = await until(lambda: lines(tmp_path), what="the event")
    assert line["trigger"] == "transport.messageReceived"


async def test_create_subscription(
    until: Until,
    make_app: MakeApp,
    pubsub: PubSubAdmin,
    router_toml: RouterToml,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = await pubsub.create_topic()
    name = pubsub.unique("auto")
    extra = f'topic = "{topic}"\ncreate_subscription = true'
    caplog.set_level(logging.INFO)
    async with make_app(router_toml(name, input_extra=extra)) as app:
        await until(app.config.inputs["connector"].plugin.is_ready, what="the input to become ready")
        assert _records(caplog, "subscription created")
        await pubsub.publish(topic, [example("transport.messageReceived")])
        (line,) = await until(lambda: lines(tmp_path), what="the event")
    assert line["meta"]["subscription"] == f"projects/test-project/subscriptions/{name}"
    async with pubsub.subscriber() as client:
        info = await client.get_subscription(f"projects/test-project/subscriptions/{name}")
    assert info["topic"] == topic
    assert info["ackDeadlineSeconds"] == 10  # the input's ack_deadline


def _records(caplog: Any, message: str) -> list[Any]:
    return [r for r in caplog.records if message in r.getMessage()]


@pytest.mark.parametrize(
    ("content", "error"),
    [(None, "No such file or directory"), ("{not json", "Expecting property name"), ("[]", "no 'type'")],
)
async def test_unusable_key_file_is_reported(
    until: Until,
    make_app: MakeApp,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    content: str | None,
    error: str,
) -> None:
    """Checked before any request: the client would otherwise quietly try other credentials."""
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    if content is not None:
        (tmp_path / "key.json").write_text(content)
    toml = f"""
[router]
data_dir = "{tmp_path}/var"
[inputs.connector]
type = "pubsub"
project = "test-project"
subscription = "enmeshed-events"
key_file = "key.json"
"""
    caplog.set_level(logging.WARNING)
    async with make_app(toml, ready=False) as app:
        (failure, *_) = await until(lambda: _records(caplog, "cannot pull"), what="a log of the key file")
        assert not app.config.inputs["connector"].plugin.is_ready()
    assert failure.error.startswith(f"key_file {tmp_path / 'key.json'}: ")
    assert error in failure.error
    assert failure.endpoint == "pubsub.googleapis.com"
