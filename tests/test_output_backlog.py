"""Each output's backlog limit (`max_pending`): one output that is down parks its excess as dead letters
(`output_backlog_full`) while its events go on to their other outputs and every input answers 2xx.

The spool counts, on each backend (the limit reached exactly, stores sharing a commit, a replay beside the
router), the running app (a reload that moves the limit), and a real router process flooded while one
output is dead: the webhook never refuses, the file output gets everything, and `dlq replay` delivers the
parked ones once the receiver is back.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import orjson
import pytest

from event_router.core.spool import (
    DeadLetterFilter,
    NewDelivery,
    Parked,
    Refused,
    Requeue,
    SeenMessage,
    Spool,
    StoreEvent,
)
from event_router.testing import (
    MakeApp,
    RouterProcess,
    dead_letters,
    example,
    free_port,
    http_receiver,
    post,
    read_jsonl,
    router_table,
    run_cli,
    send_webhook,
    until,
    wait_for,
    webhook_input,
)
from router_helpers import metric

KEY = "backlog-key"
ENV = {"ROUTER_WEBHOOK_API_KEY": KEY}
HEADERS = {"x-api-key": KEY}


def event(i: int, outputs: tuple[str, ...] = ("a",), *, seen: SeenMessage | None = None) -> StoreEvent:
    body = b'{"id":"e%d","trigger":"t","source":"hook","received_at":"x","data":{},"meta":{}}' % i
    return StoreEvent(f"e{i}", "t", body, [NewDelivery(o, "r", None) for o in outputs], seen=seen, source="hook")


@pytest.fixture
def spool(spool_at: Callable[[], Spool]) -> Iterator[Spool]:
    """The router's spool, on each backend (conftest's `spool_at`)."""
    s = spool_at()
    s.open("exclusive")
    yield s
    s.close()


def parked(results: list[list[int | Parked | Refused] | int | None]) -> list[Parked]:
    return [d for result in results if isinstance(result, list) for d in result if isinstance(d, Parked)]


def stored(results: list[list[int | Parked | Refused] | int | None]) -> list[int]:
    return [d for result in results if isinstance(result, list) for d in result if isinstance(d, int)]


# --- the spool's counts ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_limit_is_reached_exactly_then_new_deliveries_park(spool: Spool) -> None:
    limits = {"a": 3}
    for i in range(3):
        assert len(stored(await spool.store([event(i)], limits))) == 1, f"delivery {i + 1} of 3 is stored"
    (fourth,) = parked(await spool.store([event(3)], limits))
    assert (fourth.pending, fourth.limit) == (3, 3)
    # parked whole: the event is not pending, the dead letter holds it with what a replay needs
    assert (spool.depth, spool.pending_outputs(), spool.dead_letter_count()) == (3, {"a": 3}, 1)
    (letter,) = spool.dead_letters(DeadLetterFilter(reason="output_backlog_full"))
    assert (letter.dlid, letter.event_id, letter.trigger, letter.source) == (fourth.dead_letter, "e3", "t", "hook")
    assert (letter.output, letter.route, letter.attempts, letter.body) == ("a", "r", 0, event(3).body)
    assert letter.error == (
        "output a's backlog is full: 3 deliveries pending, max_pending = 3; replay this dead letter once it drains"
    )
    # one delivered: room for exactly one more, counted with what the same call stored before it
    (row, *_) = spool.fetch_due("a", spool.clock.now() + 1, 10, ())
    await spool.settle(done=[row.did])
    results = await spool.store([event(4), event(5)], limits)
    assert isinstance(results[0], list) and isinstance(results[0][0], int)
    assert isinstance(results[1], list) and isinstance(results[1][0], Parked)
    assert spool.pending_outputs() == {"a": 3} and spool.dead_letter_count() == 2


@pytest.mark.anyio
async def test_only_the_full_outputs_delivery_parks(spool: Spool) -> None:
    limits = {"a": 1, "b": 5}
    await spool.store([event(0, ("a",))], limits)
    (result,) = await spool.store([event(1, ("a", "b", "c"))], limits)
    assert isinstance(result, list)
    to_a, to_b, to_c = result
    assert isinstance(to_a, Parked) and isinstance(to_b, int), "b has room"
    assert isinstance(to_c, int), "an output without a limit in `limits` takes everything"
    assert (spool.depth, spool.pending_outputs()) == (2, {"a": 1, "b": 1, "c": 1})
    # a repeat of a stored message is a repeat, full output or not: nothing parked, nothing stored
    first = SeenMessage("hook", "m1", 2e9)
    assert len(stored(await spool.store([event(2, ("b",), seen=first)], limits))) == 1
    assert await spool.store([event(3, ("a",), seen=first)], limits) == [None]
    assert spool.dead_letter_count() == 1


@pytest.mark.anyio
async def test_stores_that_share_a_commit_hold_the_limit_to_the_delivery(spool: Spool) -> None:
    limits = {"a": 10}
    results = await asyncio.gather(*(spool.store([event(10 * k + i) for i in range(3)], limits) for k in range(8)))
    assert sum(len(stored(r)) for r in results) == 10
    assert sum(len(parked(r)) for r in results) == 14
    assert (spool.depth, spool.pending_outputs(), spool.dead_letter_count()) == (10, {"a": 10}, 14)
    # what the writer thread counts is what the database holds
    assert spool.status().backlogs["a"].pending == 10


@pytest.mark.anyio
async def test_a_replay_beside_the_router_counts_against_the_limit(spool: Spool, spool_at: Callable[[], Spool]) -> None:
    """`dlq replay` writes from another process and ignores the limit (the operator asked for those): the
    router counts what it added at its next look, and parks accordingly."""
    limits = {"a": 5}
    first = await spool.store([event(i) for i in range(7)], limits)
    assert [p.pending for p in parked(first)] == [5, 5]
    rows = spool.fetch_due("a", spool.clock.now() + 1, 10, ())
    await spool.settle(done=[r.did for r in rows[:4]])
    assert spool.pending_outputs() == {"a": 1}

    def replay(reason: str = "output_backlog_full") -> int:
        cli = spool_at()
        cli.open("shared")
        try:
            letters = cli.dead_letters(DeadLetterFilter(reason=reason))
            cli.replay_dead_letters(
                [
                    Requeue(dl.dlid, StoreEvent(f"{dl.event_id}", "t", dl.body, [NewDelivery("a", "r", None)]))
                    for dl in letters
                ]
            )
            return len(letters)
        finally:
            cli.close()

    assert await anyio.to_thread.run_sync(replay) == 2
    await until(lambda: spool.pending_outputs() == {"a": 3}, "the router counts the replayed deliveries", within=5)
    results = await spool.store([event(10 + i) for i in range(3)], limits)
    assert len(stored(results)) == 2 and [p.pending for p in parked(results)] == [5]
    # a replay may take the output past its limit; the router then parks every new delivery until it drains
    assert await anyio.to_thread.run_sync(replay) == 1
    await until(lambda: spool.pending_outputs() == {"a": 6}, "the router counts the replayed delivery", within=5)
    assert [p.pending for p in parked(await spool.store([event(20)], limits))] == [6]
    assert spool.status().backlogs["a"].pending == 6


# --- the running router: webhook, reload ------------------------------------------------------------------


def app_config(webhook: int, crm_url: str, limit: int) -> str:
    return (
        router_table(shutdown_timeout="1s")
        + webhook_input(webhook)
        + f"""
[outputs.crm]
type = "http"
url = "{crm_url}"
max_pending = {limit}
retry = {{ initial_backoff = "50ms", max_backoff = "100ms", max_attempts = 100000 }}
[outputs.archive]
type = "file"
path = "./var/archive.jsonl"
[[routes]]
name = "all"
to = ["crm", "archive"]
"""
    )


@pytest.mark.anyio
async def test_a_reload_moves_the_limit_for_new_deliveries(
    make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_WEBHOOK_API_KEY", KEY)
    port = free_port()
    with http_receiver() as crm:
        crm.respond(503)  # failing: what it was sent stays pending
        async with make_app(app_config(port, crm.url, 2)) as app:

            async def send(count: int) -> list[str]:
                return [await send_webhook(port, example("transport.messageReceived"), HEADERS) for _ in range(count)]

            def full() -> int:
                return len(dead_letters(tmp_path / "var", DeadLetterFilter(reason="output_backlog_full")))

            await send(3)
            assert (app.spool.pending_outputs()["crm"], full()) == (2, 1)
            (tmp_path / "router.toml").write_text(app_config(port, crm.url, 4))
            assert await app.reload() == (True, [], [])
            await send(3)
            assert (app.spool.pending_outputs()["crm"], full()) == (4, 2), "two more fit under the raised limit"
            (tmp_path / "router.toml").write_text(app_config(port, crm.url, 1))
            assert await app.reload() == (True, [], [])
            await send(1)
            # a lower limit drops nothing pending: new deliveries park until the backlog is below it
            assert (app.spool.pending_outputs()["crm"], full()) == (4, 3)
            crm.respond(200)
            await until(lambda: "crm" not in app.spool.pending_outputs(), "crm's backlog delivered")
            crm.respond(503)
            await send(2)
            assert full() == 4, "one fits under the limit of 1, the next parks"
            assert app.stats.get("dead_letters", reason="output_backlog_full", output="crm") == 4
            archived = tmp_path / "var" / "archive.jsonl"
            await until(lambda: archived.exists() and len(read_jsonl(archived)) == 9, "archive has all 9 events")


# --- a real router flooded while one output is dead --------------------------------------------------------


def flood_config(webhook: int, admin: int, dead_port: int, limit: int) -> str:
    return (
        router_table(admin, shutdown_timeout="2s")
        + webhook_input(webhook)
        + f"""
[outputs.crm]
type = "http"
url = "http://127.0.0.1:{dead_port}/in"
max_pending = {limit}
retry = {{ initial_backoff = "50ms", max_backoff = "200ms", max_attempts = 100000 }}
[outputs.archive]
type = "file"
path = "./var/archive.jsonl"
[[routes]]
name = "all"
to = ["crm", "archive"]
"""
    )


def test_a_dead_output_flooded_past_its_limit_never_refuses_the_connector(tmp_path: Path) -> None:
    webhook, admin = free_port(), free_port()
    # the receiver's port, bound and not listening: connections are refused, and no other process takes
    # the port before the receiver comes back on it
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    dead = int(holder.getsockname()[1])
    limit, flood = 25, 300
    config = tmp_path / "router.toml"
    config.write_text(flood_config(webhook, admin, dead, limit))
    archived = tmp_path / "var" / "archive.jsonl"
    url = f"http://127.0.0.1:{webhook}/events"
    with RouterProcess(config, env=ENV) as router:
        # many senders at once: requests share submits and commits, and the limit holds all the same
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: post(url, example("transport.messageReceived"), HEADERS), range(flood)))
        assert sorted({status for status, _, _ in answers}) == [202], [a for a in answers if a[0] != 202][:3]
        assert all(body["status"] == "accepted" for _, body, _ in answers)
        ids = {body["id"] for _, body, _ in answers}
        assert len(ids) == flood
        wait_for(lambda: archived.exists() and len(read_jsonl(archived)) == flood, what="archive has every event")
        assert {line["id"] for line in read_jsonl(archived)} == ids
        assert metric(admin, "deliveries_pending", output="crm") == limit
        assert metric(admin, "deliveries_pending_limit", output="crm") == limit
        assert metric(admin, "dead_letters_total", reason="output_backlog_full", output="crm") == flood - limit
        assert metric(admin, "spool_full_rejections_total") == 0
        full = ("--reason", "output_backlog_full")
        listed = run_cli("dlq", "list", *full, "--limit", "1000", "--json", "-c", str(config))
        assert listed.returncode == 0, listed.stderr
        letters = orjson.loads(listed.stdout)
        assert len(letters) == flood - limit
        assert {(dl["output"], dl["route"], dl["reason"]) for dl in letters} == {("crm", "all", "output_backlog_full")}
        # throttled: one line for the first parked delivery of the minute, with what finds it
        lines = [r for r in router.log_records() if r.get("msg", "").startswith("output backlog full")]
        assert len(lines) == 1, lines
        assert lines[0]["output"] == "crm" and lines[0]["route"] == "all" and lines[0]["event_id"] in ids
        assert (lines[0]["pending"], lines[0]["max_pending"]) == (limit, limit)

        holder.close()
        with http_receiver(port=dead) as crm:  # the receiver comes back
            wait_for(lambda: metric(admin, "deliveries_pending", output="crm") == 0, what="crm's backlog delivered")
            status, body, _ = post(url, example("transport.messageReceived"), HEADERS)
            assert status == 202
            ids.add(body["id"])
            back = router.wait_log("output backlog below its limit again")
            assert (back["output"], back["parked"]) == ("crm", flood - limit)
            replayed = run_cli("dlq", "replay", *full, "-c", str(config))
            assert replayed.returncode == 0, replayed.stderr
            assert replayed.stdout.strip() == f"replayed {flood - limit}, still invalid or unrouted 0, skipped 0"

            def delivered() -> list[str]:
                return [b["id"] for b in crm.bodies()]

            wait_for(lambda: len(delivered()) >= flood + 1, timeout=30, what="every event delivered to crm")
            wait_for(lambda: metric(admin, "spool_pending_events") == 0, what="nothing pending")
            assert sorted(delivered()) == sorted(ids), "each event delivered to crm exactly once"
        assert dead_letters(tmp_path / "var") == []
        assert router.terminate() == 0


def test_check_warns_about_a_webhook_rate_limit_and_outputs_that_can_fill_the_spool(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(
        router_table(extra="max_pending_events = 150")
        + webhook_input(free_port(), extra="rate_limit = { per_second = 100 }")
        + '[outputs.a]\ntype = "file"\npath = "./a.jsonl"\nmax_pending = 100\n'
        + '[outputs.b]\ntype = "file"\npath = "./b.jsonl"\nmax_pending = 50\n'
        + '[[routes]]\nname = "all"\nto = ["a", "b"]\n'
    )
    checked = run_cli("check", "-c", str(config), env=ENV)
    assert checked.returncode == 0, checked.stderr
    warnings = [line for line in checked.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        "warning: router.toml: inputs.connector.rate_limit: requests over the limit are answered 429, and the "
        "Connector never retries a webhook: each is an event lost. Keep rate_limit for senders that retry; "
        "allow_networks and api_key keep others out without refusing the Connector",
        "warning: router.toml: router.max_pending_events: the outputs' max_pending add up to 150, not less than "
        "max_pending_events (150): backlogs of outputs that are down could fill the spool, and then every input "
        "refuses events (a webhook answers 503, which the Connector does not retry); lower the outputs' "
        "max_pending or raise max_pending_events",
    ], checked.stderr
