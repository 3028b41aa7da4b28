"""Outputs, retries and dead letters, end to end in-process over real sockets and files."""

from __future__ import annotations

import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import anyio
import pytest

from event_router.api.event import Event
from event_router.core.deadletters import replay
from event_router.core.delivery import OutputWorker
from event_router.core.pipeline import InternalSource
from event_router.core.spool import DeadLetterFilter
from event_router.testing import (
    MakeApp,
    Recorded,
    dead_letters,
    example,
    free_port,
    http_receiver,
    post,
    read_jsonl,
    send_webhook,
    until,
)
from router_helpers import keyless_webhook

pytestmark = pytest.mark.anyio


def config(port: int, tmp: Path, url: str, extra_output: str = "", route_extra: str = "") -> str:
    return (
        keyless_webhook(tmp, port)
        + f"""
[outputs.crm]
type = "http"
url = "{url}"
timeout = "2s"
retry = {{ initial_backoff = "50ms", max_backoff = "200ms", max_attempts = 5 }}
{extra_output}
[outputs.archive]
type = "file"
path = "{tmp}/out/events.jsonl"
[[routes]]
name = "mail"
match = {{ trigger = ["transport.messageReceived"], "data.content.@type" = ["Mail"] }}
to = ["crm"]
{route_extra}
[[routes]]
name = "archive"
to = ["archive"]
"""
    )


async def test_webhook_to_http_and_file(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    with http_receiver() as rx:
        async with make_app(config(port, tmp_path, rx.url + "/hooks/{{trigger}}")):
            accepted = await send_webhook(port, example("transport.messageReceived"))
            await send_webhook(port, example("transport.relationshipChanged"))
            await until(lambda: rx.requests, "the CRM to receive the mail")
            await until(lambda: len(read_jsonl(tmp_path / "out/events.jsonl")) == 2, "both events archived")
        (request,) = rx.requests
    assert request.path == "/hooks/transport.messageReceived"
    assert request.headers["Idempotency-Key"] == accepted
    assert request.headers["Content-Type"] == "application/json"
    assert request.json()["data"]["content"]["subject"] == "New postal address"


async def test_retries_until_target_recovers(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    with http_receiver() as rx:
        rx.respond(503, 503, (429, {"Retry-After": "0"}), 200)
        async with make_app(config(port, tmp_path, rx.url + "/in")) as app:
            accepted = await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: len(rx.requests) == 4, "4 attempts")
            await until(lambda: app.stats.get("deliveries", outcome="delivered") >= 2, "delivered")
            assert app.stats.get("deliveries", output="crm", outcome="retry") == 3
            await until(lambda: app.spool.depth == 0, "the spool to empty")
    assert {r.headers["Idempotency-Key"] for r in rx.requests} == {accepted}


async def test_permanent_failure_dead_letters_after_one_attempt_and_replays(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    with http_receiver() as rx:
        rx.respond(400)
        async with make_app(config(port, tmp_path, rx.url + "/in")) as app:
            accepted = await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: app.stats.get("dead_letters", reason="permanent") == 1, "dead letter")
            assert len(rx.requests) == 1
            (dl,) = dead_letters(app.config.data_dir, DeadLetterFilter(output="crm"))
            assert dl.event_id == accepted and dl.attempts == 1
            assert "answered 400" in (dl.error or "")
            rx.respond(200)
            report = await anyio.to_thread.run_sync(
                lambda: replay(app.spool, app.config, app.schemas, DeadLetterFilter(output="crm"))
            )
            assert report.replayed == 1
            await until(lambda: len(rx.requests) == 2, "the replayed delivery")
            assert dead_letters(app.config.data_dir) == []
        assert rx.requests[1].headers["Idempotency-Key"] == accepted


async def test_retries_exhausted_go_to_dead_letters(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    with http_receiver() as rx:
        rx.respond(500)
        async with make_app(config(port, tmp_path, rx.url + "/in")) as app:
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: app.stats.get("dead_letters", reason="retries_exhausted") == 1, "give up")
            assert len(rx.requests) == 5


async def test_unreachable_target_is_retried(make_app: MakeApp, tmp_path: Path) -> None:
    port, closed = free_port(), free_port()
    async with make_app(config(port, tmp_path, f"http://127.0.0.1:{closed}/in")) as app:
        await send_webhook(port, example("transport.messageReceived"))
        await until(lambda: app.stats.get("deliveries", outcome="retry") >= 2, "retries")
        assert app.spool.depth == 1


async def test_hanging_target_times_out_and_retries(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    with http_receiver() as rx:
        rx.delay = 3.0
        async with make_app(config(port, tmp_path, rx.url + "/in")) as app:
            started = time.monotonic()
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: app.stats.get("deliveries", outcome="retry") >= 1, "a timeout", within=10)
            assert time.monotonic() - started < 3.0


async def test_route_retry_override(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    with http_receiver() as rx:
        rx.respond(500)
        async with make_app(config(port, tmp_path, rx.url + "/in", route_extra="retry = { max_attempts = 2 }")) as app:
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: app.stats.get("dead_letters", reason="retries_exhausted") == 1, "give up")
            assert len(rx.requests) == 2


async def test_reshape_and_encoded_url(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    reshape = 'reshape = { subject = "data.content.subject", from = "data.createdBy", note = "mail {{data.id}}" }'
    with http_receiver() as rx:
        async with make_app(config(port, tmp_path, rx.url + "/m/{{data.id}}", route_extra=reshape)):
            mail = example("transport.messageReceived")
            mail["data"]["id"] = "../Account/Sync?x=1"
            # strict validation refuses that id; the second router below validates loosely
            status, _, _ = await anyio.to_thread.run_sync(lambda: post(f"http://127.0.0.1:{port}/events", mail))
            assert status == 422, "the id does not match the MSG pattern"
    port = free_port()
    text = config(port, tmp_path, "", route_extra=reshape).replace(
        'type = "webhook"', 'type = "webhook"\nvalidation = "off"'
    )
    with http_receiver() as rx:
        text = text.replace('url = ""', f'url = "{rx.url}/m/{{{{data.id}}}}"')
        async with make_app(text):
            mail = example("transport.messageReceived")
            mail["data"]["id"] = "../Account/Sync?x=1"
            await send_webhook(port, mail)
            await until(lambda: rx.requests, "the reshaped delivery")
        (request,) = rx.requests
    assert request.path == "/m/..%2FAccount%2FSync%3Fx%3D1"
    assert request.json() == {
        "subject": "New postal address",
        "from": mail["data"]["createdBy"],
        "note": "mail ../Account/Sync?x=1",
    }


async def test_a_backlog_in_memory_delivers_the_same_bodies(make_app: MakeApp, tmp_path: Path) -> None:
    """Past the head of the buffer, fresh deliveries are kept as their stored JSON: same requests, same files."""
    port = free_port()
    reshape = 'reshape = { subject = "data.content.subject", note = "mail {{data.id}}" }'
    count = OutputWorker.PARSED_AHEAD * 3
    with http_receiver() as rx:
        rx.delay = 0.05  # one at a time, slowly: the buffer fills up behind
        text = config(port, tmp_path, rx.url + "/m/{{data.id}}", route_extra=reshape).replace(
            'timeout = "2s"', 'timeout = "2s"\nconcurrency = 1'
        )
        async with make_app(text) as app:
            mails = []
            for i in range(count):
                mail = example("transport.messageReceived")
                mail["data"]["id"] = f"MSG{i:017d}"
                mails.append(mail)
            await anyio.to_thread.run_sync(lambda: [post(f"http://127.0.0.1:{port}/events", m) for m in mails])
            assert len(app.pipeline.workers["crm"]._buffer) > OutputWorker.PARSED_AHEAD, "no backlog formed"
            await until(lambda: len(rx.requests) >= count, "every reshaped delivery", within=60)
            await until(lambda: len(read_jsonl(tmp_path / "out/events.jsonl")) >= count, "every event archived")
        got = {r.path: r.json() for r in rx.requests}
    assert len(got) == count
    for mail in mails:
        assert got[f"/m/{mail['data']['id']}"] == {
            "subject": "New postal address",
            "note": f"mail {mail['data']['id']}",
        }
    archived = read_jsonl(tmp_path / "out/events.jsonl")
    assert [line["data"] for line in archived] == [m["data"] for m in mails]


async def test_retry_spacing_follows_backoff_and_retry_after(make_app: MakeApp, tmp_path: Path) -> None:
    """503 with Retry-After: 1 waits at least that (it is under max_backoff); then full-jitter waits stay under
    their ceilings."""
    port = free_port()
    with http_receiver() as rx:
        rx.respond((503, {"Retry-After": "1"}), 503, 503, 200)
        text = config(port, tmp_path, rx.url + "/in").replace(
            'retry = { initial_backoff = "50ms", max_backoff = "200ms", max_attempts = 5 }',
            'retry = { initial_backoff = "200ms", max_backoff = "1500ms", max_attempts = 5 }',
        )
        async with make_app(text):
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: len(rx.requests) == 4, "4 attempts", within=20)
        times = [r.at for r in rx.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 1.0, gaps  # the receiver's Retry-After wins over the backoff
    # attempt 2 failed: wait in [0, 200ms * 2 = 400ms]; attempt 3: in [0, 800ms].
    # The worker wakes on the due time itself; 250 ms covers scheduling on a loaded 2-core machine.
    assert gaps[1] <= 0.4 + 0.25, gaps
    assert gaps[2] <= 0.8 + 0.25, gaps


def test_delivery_body_is_the_payload_as_json() -> None:
    """Outputs send `Delivery.body` instead of encoding `payload`: they must be the same bytes, whether the
    delivery came straight from the pipeline or was read back from the spool; reshaped ones have none."""
    import orjson

    from event_router.api.event import Event
    from event_router.core.delivery import _Pending
    from event_router.core.spool import DeliveryRow

    event = Event(trigger="t.x", data={"a": [1, 2.5, "ü", None], "b": {"c": True}}, source="s", meta={"h": "v"})
    body = event.to_json()
    fresh = _Pending(did=1, route="r", attempts=0, first_at=0.0, event=event, body=body).to_delivery({})
    stored = _Pending.from_row(DeliveryRow(1, 1, "o", "r", None, 0, 0.0, body)).to_delivery({})
    for delivery in (fresh, stored):
        assert delivery.body is not None and delivery.body == orjson.dumps(delivery.payload)
    reshaped = _Pending.from_row(DeliveryRow(2, 1, "o", "r", b'{"x":1}', 0, 0.0, body)).to_delivery({})
    assert reshaped.reshaped and reshaped.body is None and reshaped.payload == {"x": 1}


async def test_slow_commits_bound_the_attempted_deliveries_held(make_app: MakeApp, tmp_path: Path) -> None:
    """While outcomes wait for their commit, the worker attempts no more than its bound, and what waits
    holds no event: a slow disk cannot fill memory with attempted deliveries."""
    port = free_port()
    count = 20
    with http_receiver() as rx:
        text = config(port, tmp_path, rx.url + "/m").replace('timeout = "2s"', 'timeout = "2s"\nconcurrency = 2')
        async with make_app(text) as app:
            gate = anyio.Event()
            settle = app.spool.settle

            async def slow_settle(**kwargs):  # type: ignore[no-untyped-def]
                await gate.wait()
                return await settle(**kwargs)

            app.spool.settle = slow_settle  # type: ignore[method-assign]
            worker = app.pipeline.workers["crm"]
            bound = 2 * OutputWorker.UNRECORDED_PER_SLOT
            mails = [example("transport.messageReceived") for _ in range(count)]
            await anyio.to_thread.run_sync(lambda: [post(f"http://127.0.0.1:{port}/events", m) for m in mails])
            await until(lambda: len(rx.requests) >= bound, "the first deliveries")
            await anyio.sleep(0.5)
            assert len(rx.requests) == bound
            buffered = {p.did for p in worker._buffer}
            waiting = [p for did, p in worker._claimed.items() if did not in buffered]
            assert len(waiting) == bound
            assert all(p.event is None and p.body is None and p.payload is None for p in waiting)
            gate.set()
            await until(lambda: len(rx.requests) >= count, "every delivery once commits resume")
    assert len({r.headers["Idempotency-Key"] for r in rx.requests}) == count


async def test_a_retry_due_before_its_outcome_is_committed_is_not_left_to_the_poll(
    make_app: MakeApp, tmp_path: Path
) -> None:
    """A retry whose backoff ends while its outcome is still being committed (a short full-jitter wait, a
    slow disk) is attempted once the commit is done, not at the worker's next poll a second later."""
    port = free_port()
    with http_receiver() as rx:
        rx.respond(503, 200)
        text = config(port, tmp_path, rx.url + "/m").replace(
            'retry = { initial_backoff = "50ms", max_backoff = "200ms", max_attempts = 5 }',
            'retry = { initial_backoff = "1ms", max_backoff = "1ms", max_attempts = 5 }',
        )
        async with make_app(text) as app:
            settle = app.spool.settle

            async def slow_settle(**kwargs):  # type: ignore[no-untyped-def]
                await anyio.sleep(0.1)  # a commit slower than the 1 ms backoff
                return await settle(**kwargs)

            app.spool.settle = slow_settle  # type: ignore[method-assign]
            assert app.pipeline.workers["crm"].poll_interval == 1.0
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: len(rx.requests) == 2, "the retry", within=10)
    gap = rx.requests[1].at - rx.requests[0].at
    assert gap < 0.6, f"the retry waited {gap:.3f}s: for the poll, not for its commit (0.1 s)"


# --- which answers are retried (`retry_on`, `permanent_on`) --------------------------------------------


async def test_retry_on_retries_a_404_until_the_receiver_is_back(make_app: MakeApp, tmp_path: Path) -> None:
    """A receiver being redeployed answers 404 for a while: with `retry_on = [404]` that is retried like a
    503, and the delivery goes through once it answers 2xx again."""
    port = free_port()
    with http_receiver() as rx:
        rx.respond(404, 404, 404, 200)
        async with make_app(config(port, tmp_path, rx.url + "/in", extra_output="retry_on = [404]")) as app:
            accepted = await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: app.stats.get("deliveries", output="crm", outcome="delivered") == 1, "delivered")
            assert app.stats.get("deliveries", output="crm", outcome="retry") == 3
            assert dead_letters(app.config.data_dir) == []
    assert [r.headers["Idempotency-Key"] for r in rx.requests] == [accepted] * 4


async def test_a_404_is_permanent_without_retry_on(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    with http_receiver() as rx:
        rx.respond(404, 200)
        async with make_app(config(port, tmp_path, rx.url + "/in")) as app:
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: app.stats.get("dead_letters", reason="permanent", output="crm") == 1, "dead letter")
            (letter,) = dead_letters(app.config.data_dir, DeadLetterFilter(output="crm"))
            await anyio.sleep(0.3)  # the backoff of a retry, were there one
    assert len(rx.requests) == 1
    assert letter.attempts == 1 and "answered 404" in (letter.error or "")


async def test_permanent_on_dead_letters_a_503_at_once(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    with http_receiver() as rx:
        rx.respond(503, 200)
        text = config(port, tmp_path, rx.url + "/in", extra_output='permanent_on = [503]\nretry_on = ["5xx"]')
        async with make_app(text) as app:
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: app.stats.get("dead_letters", reason="permanent", output="crm") == 1, "dead letter")
            (letter,) = dead_letters(app.config.data_dir, DeadLetterFilter(output="crm"))
            await anyio.sleep(0.3)
            assert app.stats.get("deliveries", output="crm", outcome="retry") == 0
    assert len(rx.requests) == 1
    assert letter.reason == "permanent" and letter.attempts == 1 and "answered 503" in (letter.error or "")


# --- rate_limit ----------------------------------------------------------------------------------------

RATE = "rate_limit = { per_second = 20, burst = 1 }"


def assert_paced(times: list[float], per_second: float) -> None:
    """Arrival times of requests sent at most `per_second` with a burst of 1: every run of them spans at least
    what the limit allows, less a little for the receiver's threads (a request may arrive a few ms late, the
    one after it on time)."""
    span = times[-1] - times[0]
    assert span >= (len(times) - 1) / per_second - 0.05, f"{len(times)} requests in {span:.3f}s"
    window = int(per_second)
    shortest = min(b - a for a, b in zip(times, times[window:], strict=False))
    assert shortest >= window / per_second - 0.05, f"{window + 1} requests within {shortest:.3f}s"


async def test_rate_limit_paces_deliveries_and_costs_no_attempt(make_app: MakeApp, tmp_path: Path) -> None:
    """60 deliveries at 20/s with a burst of 1 take at least 59/20 s; they wait, none fails or is retried,
    and the file output beside it is not held back (the limit is per output)."""
    port = free_port()
    count = 60
    with http_receiver() as rx:
        text = config(port, tmp_path, rx.url + "/in", extra_output=RATE).replace("max_attempts = 5", "max_attempts = 1")
        async with make_app(text) as app:
            mails = [example("transport.messageReceived") for _ in range(count)]
            await anyio.to_thread.run_sync(lambda: [post(f"http://127.0.0.1:{port}/events", m) for m in mails])
            await until(lambda: len(read_jsonl(tmp_path / "out/events.jsonl")) == count, "every event archived")
            assert len(rx.requests) < count, "the file output waited for the http output's limit"
            await until(
                lambda: app.stats.get("deliveries", output="crm", outcome="delivered") == count, "all", within=30
            )
            assert app.stats.get("deliveries", output="crm", outcome="retry") == 0
            assert app.stats.get("rate_limited", output="crm") > 0
            assert dead_letters(app.config.data_dir) == []
        times = sorted(r.at for r in rx.requests)
    assert len({r.headers["Idempotency-Key"] for r in rx.requests}) == count
    assert times[-1] - times[0] >= 2.9
    assert_paced(times, 20)


async def test_rate_limit_holds_across_retries(make_app: MakeApp, tmp_path: Path) -> None:
    """Retries take tokens like first attempts: 60 deliveries of which 5 fail once are 65 requests at 20/s;
    and waiting for a token is no attempt: with `max_attempts = 2` every delivery still gets through."""
    port = free_port()
    count, failing = 60, 5
    failed: set[str] = set()
    lock = threading.Lock()

    def first_five_fail_once(request: Recorded, handler: BaseHTTPRequestHandler) -> None:
        key = request.headers["Idempotency-Key"]
        with lock:
            fail = len(failed) < failing and key not in failed
            if fail:
                failed.add(key)
        body = b"{}"
        handler.send_response(503 if fail else 200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with http_receiver(first_five_fail_once) as rx:
        text = config(port, tmp_path, rx.url + "/in", extra_output=RATE).replace("max_attempts = 5", "max_attempts = 2")
        async with make_app(text) as app:
            mails = [example("transport.messageReceived") for _ in range(count)]
            await anyio.to_thread.run_sync(lambda: [post(f"http://127.0.0.1:{port}/events", m) for m in mails])
            await until(
                lambda: app.stats.get("deliveries", output="crm", outcome="delivered") == count, "all", within=30
            )
            assert app.stats.get("deliveries", output="crm", outcome="retry") == failing
            assert dead_letters(app.config.data_dir) == []
        times = sorted(r.at for r in rx.requests)
    assert len(times) == count + failing
    assert len({r.headers["Idempotency-Key"] for r in rx.requests}) == count
    assert_paced(times, 20)


async def test_a_stop_ends_a_wait_for_the_rate_limit(make_app: MakeApp, tmp_path: Path) -> None:
    """At one delivery every 10 s, the second waits; stopping the router does not wait with it (nor for
    `shutdown_timeout`), and the delivery stays pending for the next start, unattempted."""
    port = free_port()
    with http_receiver() as rx:
        text = config(port, tmp_path, rx.url + "/in", extra_output="rate_limit = { per_second = 0.1 }")
        async with make_app(text) as app:
            await send_webhook(port, example("transport.messageReceived"))
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: app.stats.get("deliveries", output="crm", outcome="delivered") == 1, "the first")
            await until(lambda: app.pipeline.workers["crm"]._pacing is not None, "the wait for the second")
            stopping = time.monotonic()
        stopped = time.monotonic() - stopping
        assert stopped < 3.0, f"the stop took {stopped:.1f}s"
        assert len(rx.requests) == 1
        async with make_app(text.replace("per_second = 0.1", "per_second = 100")) as app:
            await until(lambda: len(rx.requests) == 2, "the second, after the restart")
            assert app.stats.get("deliveries", output="crm", outcome="retry") == 0


async def test_a_reload_that_keeps_the_rate_limit_keeps_its_bucket(make_app: MakeApp, tmp_path: Path) -> None:
    """A reload that changes another key restarts the output; the limit it kept grants no fresh burst: at one
    delivery every 4 s, the one sent after the reload waits for the token the one before took."""
    port = free_port()
    with http_receiver() as rx:
        text = config(port, tmp_path, rx.url + "/in", extra_output="rate_limit = { per_second = 0.25 }")
        async with make_app(text) as app:
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: len(rx.requests) == 1, "the first delivery")
            before = app.pipeline.workers["crm"]
            (tmp_path / "router.toml").write_text(text.replace('timeout = "2s"', 'timeout = "3s"'))
            assert await app.reload() == (True, [], [])
            assert app.pipeline.workers["crm"] is not before, "the output restarted"
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: len(rx.requests) == 2, "the second delivery", within=15)
    gap = rx.requests[1].at - rx.requests[0].at
    assert gap >= 3.5, f"the second went {gap:.2f}s after the first: the reload gave a new burst"


async def test_buffered_deliveries_start_together_while_slots_are_free(make_app: MakeApp, tmp_path: Path) -> None:
    """Deliveries waiting in the buffer all start at once when the output has free slots, each not a turn
    of the event loop after the one before: on a busy loop each turn is a wait (an http output, one
    delivery per attempt, started eight of them milliseconds apart with every slot free)."""
    port = free_port()
    with http_receiver() as rx:
        rx.delay = 1.0  # every attempt stays in flight while the test looks
        async with make_app(config(port, tmp_path, rx.url + "/m")) as app:
            worker = app.pipeline.workers["crm"]
            concurrency = worker.config.concurrency
            turns: list[int] = []

            async def count_turns() -> None:
                """The loop's turns until every slot holds an attempt."""
                turn = 0
                while worker.in_flight < concurrency:
                    turn += 1
                    await anyio.sleep(0)
                turns.append(turn)

            mail = example("transport.messageReceived")
            mails = [Event(trigger=mail["trigger"], data=mail["data"], source="test") for _ in range(concurrency)]
            results = await app.pipeline.submit(InternalSource(), mails)
            assert [r.status for r in results] == ["accepted"] * concurrency
            with anyio.fail_after(5):
                await count_turns()
            # the worker wakes, then starts them all: two yields per delivery took 2 * concurrency turns
            assert turns[0] <= 3, turns
            await until(lambda: len(rx.requests) >= concurrency, "every attempt at the receiver")


async def test_a_batch_that_fails_fails_the_worker_which_restarts_and_sends_it_again(
    make_app: MakeApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch's own failure (here its outcome's record) ends the worker as a failure, logged, with the
    attempts still in flight let finish; the supervisor restarts it, and the delivery whose outcome was
    never recorded is read back from the spool and sent again (at least once, never lost)."""
    port = free_port()
    with http_receiver() as rx:
        async with make_app(config(port, tmp_path, rx.url + "/m")) as app:
            worker = app.pipeline.workers["crm"]
            record = worker._record
            broken = [True]

            async def record_once_broken(batch: list[object], outcomes: list[object]) -> None:
                if broken:
                    broken.clear()
                    raise RuntimeError("recording broke")
                await record(batch, outcomes)  # type: ignore[arg-type]

            worker._record = record_once_broken  # type: ignore[method-assign,assignment]
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: len(rx.requests) == 2, "sent again after the worker's restart", within=15)
            await until(lambda: app.stats.get("deliveries", output="crm", outcome="delivered") == 1, "recorded")
            assert app.spool.depth == 0
    failed = [r for r in caplog.records if r.getMessage().startswith("output failed; restarting it")]
    assert failed, [r.getMessage() for r in caplog.records]
    assert failed[0].exc_info is not None and "recording broke" in str(failed[0].exc_info[1])
    assert len({r.headers["Idempotency-Key"] for r in rx.requests}) == 1


async def test_a_worker_failing_right_after_it_started_a_batch_gives_everything_back(
    make_app: MakeApp, tmp_path: Path
) -> None:
    """The worker fails (a spool read's non-transient error) in the very turn it made a batch's task, before
    that task ran: the batch is cancelled through its scope and still gives back its slot and its claim, so
    the restarted worker (the same object) delivers it and the events after it, with one slot only."""
    from event_router.api.errors import SpoolError

    port = free_port()
    with http_receiver() as rx:
        async with make_app(config(port, tmp_path, rx.url + "/m", extra_output="concurrency = 1")) as app:
            worker = app.pipeline.workers["crm"]
            refill = worker._refill
            broken = [True]

            def refill_breaking() -> None:
                if broken and worker.in_flight:  # right after the task was made, before any yield
                    broken.clear()
                    raise SpoolError("spool read failed: not transient")
                refill()

            worker._refill = refill_breaking  # type: ignore[method-assign]
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: not broken, "the failure")
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: app.stats.get("deliveries", output="crm", outcome="delivered") == 2, "both delivered")
            await until(lambda: app.spool.depth == 0, "nothing pending")
            assert worker.in_flight == 0 and not worker._claimed
            assert worker._limiter.value == 1
    assert len({r.headers["Idempotency-Key"] for r in rx.requests}) == 2


async def test_a_batch_failing_while_the_worker_waits_for_a_slot_fails_it_at_once(
    make_app: MakeApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker waits for a free slot (every one taken) when a batch fails after it gave its own back: the
    worker fails then, not once a slot frees (an attempt may take up to `timeout`), and afterwards holds no
    slot it did not give back."""
    port = free_port()
    with http_receiver() as rx:
        async with make_app(config(port, tmp_path, rx.url + "/m", extra_output="concurrency = 1")) as app:
            worker = app.pipeline.workers["crm"]
            record = worker._record
            go = anyio.Event()

            async def record_failing_on_cue(batch: list[object], outcomes: list[object]) -> None:
                await go.wait()
                if len(rx.requests) == 1:
                    raise RuntimeError("recording broke")
                await record(batch, outcomes)  # type: ignore[arg-type]

            worker._record = record_failing_on_cue  # type: ignore[method-assign,assignment]
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: len(rx.requests) == 1, "the first attempt")
            await worker._limiter.acquire()  # the test holds the one slot the first batch gave back
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: worker._slot_wait is not None, "the worker waiting for a slot")
            go.set()

            def restarting() -> bool:
                return any(r.getMessage().startswith("output failed; restarting it") for r in caplog.records)

            await until(restarting, "the worker failed while the test still holds the slot", within=5)
            assert worker._limiter.value == 0  # the worker took nothing it kept
            worker._limiter.release()
            await until(lambda: app.stats.get("deliveries", output="crm", outcome="delivered") == 2, "both recorded")
    assert len({r.headers["Idempotency-Key"] for r in rx.requests}) == 2
