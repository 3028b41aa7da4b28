"""Mode `stream` against the machine's Redis: entries become events, each XACKed only once stored; broken
and poison entries become dead letters and are acknowledged; a full spool leaves entries pending."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from event_router.testing import MakeApp, dead_letters, example, http_receiver
from event_router_redis.testing import RedisKit, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.broker("redis")]

#: valid JSON that orjson parses (up to 1024 levels) but cannot write back (254): only the bytes can be kept
DEEP = "[" * 300 + "]" * 300


def ready(app: Any) -> bool:
    return bool(app.config.inputs["rd"].plugin.is_ready())


async def test_xadded_entries_become_events_and_are_acknowledged(make_app: MakeApp, redis_kit: RedisKit) -> None:
    kit = redis_kit
    message = kit.message()
    relationship = example("transport.relationshipChanged")["data"]
    rel_trigger = f"consumption.relationshipEvent.REL{uuid.uuid4().hex[:17].upper()}"
    # Written before the router ever ran: the group it creates starts at the beginning of the stream.
    ids = kit.xadd(
        {"trigger": "transport.messageReceived", "data": message, "bridge": "b-1"},
        {"namespace": rel_trigger, "data": relationship},
        {"trigger": "runtime.modulesStarted", "data": "{}"},
        {"trigger": "runtime.modulesStarted"},
    )
    async with make_app(kit.stream_config()) as app:
        await eventually(lambda: len(kit.lines()) == 4, what="four events in the file")
        await eventually(lambda: kit.pending() == 0, what="every entry acknowledged")
        assert ready(app)
    lines = kit.lines()
    assert [line["trigger"] for line in lines] == [
        "transport.messageReceived",
        rel_trigger,
        "runtime.modulesStarted",
        "runtime.modulesStarted",
    ]
    assert lines[0]["data"] == message
    assert lines[0]["source"] == "rd"
    assert lines[0]["meta"] == {
        "stream": kit.stream,
        "entry_id": ids[0].decode(),
        "deliveries": 1,
        "fields": {"bridge": "b-1"},
    }
    assert lines[1]["data"] == relationship
    assert [lines[2]["data"], lines[3]["data"]] == [{}, None], "no data field is an event without data"


async def test_broken_entries_are_dead_lettered_and_acknowledged(make_app: MakeApp, redis_kit: RedisKit) -> None:
    kit = redis_kit
    invalid = kit.message()
    del invalid["createdBy"]
    marker = kit.message()
    kit.xadd(
        {"data": "{}"},
        {"trigger": "transport.messageReceived", "data": "{nope"},
        {"trigger": "transport.messageReceived", "data": invalid},
        {"trigger": b"\xfftransport", "data": "{}"},
        {"trigger": "transport.somethingNew", "data": "{}"},
        {"trigger": "transport.messageSent", "data": DEEP},
        {"trigger": "transport.messageReceived", "data": marker},
    )
    config = kit.stream_config('consumer = "steady"\nunknown_triggers = "dead-letter"')
    async with make_app(config) as app:
        await eventually(lambda: marker["id"] in kit.message_ids(), what="the marker event")
        await eventually(lambda: kit.pending("event-router") == 0, what="every entry acknowledged")
        letters = dead_letters(app.config.data_dir)
    assert sorted(dl.reason for dl in letters) == [
        "undecodable",
        "undecodable",
        "undecodable",
        "undecodable",
        "unknown_trigger",
        "validation",
    ], [(dl.reason, dl.error) for dl in letters]
    errors = {dl.error for dl in letters}
    assert 'entry has no "trigger" (or "namespace") field naming the Connector event' in errors
    assert "the trigger field is not UTF-8" in errors
    not_json = next(dl for dl in letters if (dl.error or "").startswith('field "data" is not valid JSON'))
    assert not_json.trigger == "transport.messageReceived"
    kept = orjson.loads(not_json.body)
    assert orjson.loads(kept["raw"]) == {"trigger": "transport.messageReceived", "data": "{nope"}
    assert kept["meta"]["stream"] == kit.stream
    assert any("createdBy" in (dl.error or "") for dl in letters if dl.reason == "validation")
    deep = next(dl for dl in letters if dl.trigger == "transport.messageSent")
    # undecodable either way: the core fails on it (schema validation recursion) or cannot write it back
    assert deep.reason == "undecodable", deep.error
    assert orjson.loads(orjson.loads(deep.body)["raw"])["data"] == DEEP, "kept as the entry's fields"

    # Same consumer again: an entry left unacknowledged would be read again now, and dead-lettered twice.
    again = kit.message()
    kit.xadd({"trigger": "transport.messageReceived", "data": again})
    async with make_app(config) as app:
        await eventually(lambda: again["id"] in kit.message_ids(), what="the second marker")
        assert len(dead_letters(app.config.data_dir)) == 6
    assert kit.message_ids() == [marker["id"], again["id"]]


async def test_poison_entry_is_dead_lettered_after_max_deliveries(make_app: MakeApp, redis_kit: RedisKit) -> None:
    kit = redis_kit
    poison = kit.message()
    fine = kit.message()
    with kit.client() as client:
        client.xgroup_create(kit.stream, "event-router", id="0", mkstream=True)
        kit.xadd({"trigger": "transport.messageReceived", "data": poison})
        # A consumer that crashed on it five times: every re-read of its pending entries counts a delivery.
        client.xreadgroup("event-router", "ghost", {kit.stream: ">"})
        for _ in range(4):
            client.xreadgroup("event-router", "ghost", {kit.stream: "0"})
        kit.xadd({"trigger": "transport.messageReceived", "data": fine})
        client.xreadgroup("event-router", "ghost", {kit.stream: ">"})
        assert [row["times_delivered"] for row in client.xpending_range(kit.stream, "event-router", "-", "+", 10)] == [
            5,
            1,
        ]
    config = kit.stream_config('claim_idle = "200ms"\nmax_deliveries = 5')
    async with make_app(config) as app:
        await eventually(lambda: fine["id"] in kit.message_ids(), what="the claimed entry")
        await eventually(lambda: kit.pending() == 0, what="both entries acknowledged")
        (letter,) = dead_letters(app.config.data_dir)
    assert letter.reason == "undecodable"
    assert letter.error == "delivered 6 times without being acknowledged (max_deliveries = 5)"
    assert letter.trigger == "transport.messageReceived"
    assert orjson.loads(orjson.loads(letter.body)["raw"])["data"] == orjson.dumps(poison).decode()
    (line,) = kit.lines()
    assert line["meta"]["deliveries"] == 2, "claimed from the ghost: its second delivery"


async def test_spool_full_leaves_entries_pending_and_a_steady_consumer_reads_them_again(
    make_app: MakeApp, redis_kit: RedisKit
) -> None:
    kit = redis_kit
    events = [kit.message() for _ in range(40)]
    with http_receiver() as receiver:
        receiver.respond(503)
        sink = (
            f'[outputs.sink]\ntype = "http"\nurl = "{receiver.url}/hook"\n'
            'retry = { initial_backoff = "50ms", max_backoff = "200ms", max_attempts = 1000 }\n'
        )
        # claim_idle of an hour: what comes back after the restart is this consumer's own pending entries
        config = kit.stream_config(
            'consumer = "steady"\nclaim_idle = "1h"\nbatch_size = 16',
            "max_pending_events = 10",
            outputs=sink,
            to='"archive", "sink"',
        )
        kit.xadd(*[{"trigger": "transport.messageReceived", "data": e} for e in events])
        async with make_app(config) as app:
            await eventually(lambda: app.stats.get("spool_full_rejections"), what="the spool to fill")
            with kit.client() as client:
                (group,) = client.xinfo_groups(kit.stream)
            acknowledged = group["entries-read"] - group["pending"]
            assert group["pending"] > 0, "what does not fit stays pending"
            assert acknowledged <= app.spool.depth <= 10, "nothing acknowledged that is not stored"
        assert kit.pending() > 0, "stopping does not acknowledge what was held"
        receiver.respond(200)
        async with make_app(config):
            await eventually(lambda: len(kit.message_ids()) == 40, what="all 40 events in the file")
            await eventually(lambda: kit.pending() == 0, what="every entry acknowledged")
    assert sorted(kit.message_ids()) == sorted(e["id"] for e in events)
