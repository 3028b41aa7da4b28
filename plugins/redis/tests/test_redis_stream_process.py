"""Mode `stream` with `event-router run` in a subprocess: SIGKILL mid-stream loses nothing, and a router
whose Redis is not there yet runs, and reports ready once it reads the stream."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from event_router.testing import RouterProcess, free_port, http_receiver, wait_for
from event_router_redis.testing import RedisKit

pytestmark = [pytest.mark.slow, pytest.mark.broker("redis")]

RETRY = 'retry = { initial_backoff = "1s", max_backoff = "2s", max_attempts = 1000 }'


def test_sigkill_mid_stream_then_restart_delivers_every_entry(redis_kit: RedisKit, tmp_path: Path) -> None:
    kit = redis_kit
    first = [kit.message() for _ in range(600)]
    later = [kit.message() for _ in range(400)]
    config = tmp_path / "router.toml"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: deliveries to `sink` pile up in the spool

    def write(sink_url: str) -> None:
        sink = f'[outputs.sink]\ntype = "http"\nurl = "{sink_url}/hook"\n{RETRY}\n'
        # Default consumer name (input-host-pid): after the restart the entries pending at the killed
        # process belong to a consumer that is gone, and are claimed once idle for claim_idle.
        text = kit.stream_config('claim_idle = "1s"', "max_pending_events = 250", outputs=sink, to='"archive", "sink"')
        config.write_text(text)

    write(dead)
    kit.xadd(*[{"trigger": "transport.messageReceived", "data": e} for e in first])
    router = RouterProcess(config).start()
    try:
        wait_for(
            lambda: any(r.get("msg", "").startswith("spool full") for r in router.log_records()),
            timeout=60,
            what="the spool to fill",
        )
        # Mid-stream: part of the batch is stored (in the file) and acknowledged; the rest is held, read into
        # the process but neither stored nor acknowledged. Those are what SIGKILL must not lose.
        wait_for(lambda: len(kit.message_ids()) >= 250, timeout=60, what="the part that fits in the file")
        assert kit.pending() > 0
    finally:
        router.kill()
    held = kit.pending()
    kit.xadd(*[{"trigger": "transport.messageReceived", "data": e} for e in later])  # while the router is down
    with http_receiver() as receiver:
        write(receiver.url)
        with RouterProcess(config, log=tmp_path / "again.log") as again:
            wait_for(lambda: len(set(kit.message_ids())) == 1000, timeout=90, what="all 1000 events in the file")
            wait_for(lambda: kit.pending() == 0, timeout=30, what="every entry acknowledged")
            claimed = [
                r for r in again.log_records() if r.get("msg") == "claimed entries another consumer left unacknowledged"
            ]
    events: dict[str, set[str]] = defaultdict(set)
    for line in kit.lines():
        events[line["data"]["id"]].add(line["id"])
    assert set(events) == {e["id"] for e in first + later}
    # One router event per entry: the input stored none twice. (The file output may write an event twice,
    # with the same id, when the kill came between its write and the spool's record of it.)
    assert all(len(ids) == 1 for ids in events.values())
    assert sum(r["count"] for r in claimed) == held
    redelivered = {line["id"] for line in kit.lines() if line["meta"]["deliveries"] > 1}
    assert len(redelivered) == held


def test_starts_while_redis_is_down_and_reads_once_it_is_up(tmp_path: Path, private_redis) -> None:  # type: ignore[no-untyped-def]
    server = private_redis()
    kit = RedisKit(tmp_path, port=server.port)
    config = tmp_path / "router.toml"
    config.write_text(kit.stream_config())
    with RouterProcess(config, ready=False) as router:  # runs, not ready: Redis is not there
        wait_for(
            lambda: any(r.get("msg") == "cannot read from Redis" for r in router.log_records()),
            what="the connection failure logged",
        )
        assert "READY=1" not in router.poll_messages()
        server.start()
        router.wait_message("READY=1")  # once the input reads the stream
        assert any(r.get("msg") == "reading the Redis stream" for r in router.log_records())
        message = kit.message()
        kit.xadd({"trigger": "transport.messageReceived", "data": message})
        wait_for(lambda: kit.message_ids() == [message["id"]], what="the event in the file")
