"""Retention and replay (#19): `[router] retention` keeps delivered events (not pending), the router prunes them
once expired, and `event-router replay` sends those received in a window again, with the same event ids. The
spool's part on both backends; then real router processes on both backends, with real HTTP receivers and the
command as a separate process beside them."""

from __future__ import annotations

import math
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
import pytest

from event_router.core.spool import NewDelivery, Spool, StoreEvent
from event_router.core.spool.postgresql import PRUNE_LOCK
from event_router.core.spool.sqlite import SCHEMA_VERSION, SQLiteSpool
from event_router.testing import (
    RouterProcess,
    delivery_ids,
    example,
    free_port,
    http_receiver,
    readyz,
    router_table,
    run_cli,
    wait_for,
    webhook_input,
)
from router_helpers import http_output, metric_values, numbered_message, route, send_event, spool_rows

KEY = "retention-key"
ENV = {"ROUTER_WEBHOOK_API_KEY": KEY}
EVERYTHING = (0.0, math.inf)


def kept_event(n: int, received: float | None, *, output: str = "crm") -> StoreEvent:
    body = orjson.dumps({"id": f"e-{n}", "trigger": "transport.messageReceived", "n": n})
    return StoreEvent(f"e-{n}", "transport.messageReceived", body, [NewDelivery(output, "r", None)], received=received)


def due(spool: Spool, output: str = "crm") -> list[tuple[int, str]]:
    return [(row.did, row.event_id) for row in spool.fetch_due(output, spool.clock.now() + 1, 100, ())]


# --- the spool, on both backends ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_delivered_event_stored_with_its_time_is_kept_and_not_pending(spool_at: Callable[[], Spool]) -> None:
    spool = spool_at()
    spool.open("exclusive")
    try:
        stored = await spool.store([kept_event(1, 1000.0), kept_event(2, None), kept_event(3, 1001.0)])
        assert spool.depth == 3
        await spool.settle(done=[ids[0] for ids in delivery_ids(stored)])
        assert spool.depth == 0
        assert spool.pending_outputs() == {}
        status = spool.status()
        assert (status.pending_events, dict(status.backlogs)) == (0, {})
        assert spool.count_kept(*EVERYTHING) == 2, "the event stored without a time is gone with its delivery"
        kept = spool.kept_events(*EVERYTHING)
        assert [(k.event_id, k.received) for k in kept] == [("e-1", 1000.0), ("e-3", 1001.0)]
        assert orjson.loads(kept[1].body)["n"] == 3
        assert spool.count_kept(1000.5, 2000.0) == 1, "[since, until) of the received time"
        # read in pages, each from past the last one read
        page = spool.kept_events(*EVERYTHING, limit=1)
        assert [k.event_id for k in spool.kept_events(*EVERYTHING, after=(page[0].received, page[0].seq))] == ["e-3"]
    finally:
        spool.close()


@pytest.mark.anyio
async def test_a_replay_from_another_process_gives_kept_events_new_deliveries(spool_at: Callable[[], Spool]) -> None:
    """`requeue_kept` as `event-router replay` calls it (a shared open beside the router): the router hands out
    the new deliveries with the same event, and once they are done the event is kept again, not pending. An
    event still pending is given one more delivery."""
    router = spool_at()
    router.open("exclusive")
    try:
        stored = await router.store([kept_event(1, 1000.0), kept_event(2, 1001.0)])
        first, second = (ids[0] for ids in delivery_ids(stored))
        await router.settle(done=[first])  # e-2 stays pending
        kept = {k.event_id: k.seq for k in router.kept_events(*EVERYTHING)}
        replay = spool_at()
        replay.open("shared")
        try:
            requeued = replay.requeue_kept(
                [(kept["e-1"], [NewDelivery("crm", "again", None)]), (kept["e-2"], [NewDelivery("crm", "again", None)])]
            )
            assert requeued == {kept["e-1"], kept["e-2"]}
            assert replay.requeue_kept([(kept["e-1"], [])]) == set(), "nothing to deliver: nothing done"
        finally:
            replay.close()
        handed = due(router)
        assert sorted(event for _, event in handed) == ["e-1", "e-2", "e-2"]
        assert second in {did for did, _ in handed}, "the first delivery of e-2 is still there"
        await router.settle(done=[did for did, _ in handed])
        assert router.status().pending_events == 0
        assert router.count_kept(*EVERYTHING) == 2
    finally:
        router.close()


@pytest.mark.anyio
async def test_prune_forgets_expired_kept_events_without_pending_deliveries(spool_at: Callable[[], Spool]) -> None:
    spool = spool_at()
    spool.open("exclusive")
    try:
        stored = await spool.store([kept_event(n, 100.0 * n) for n in range(1, 6)])
        dids = [ids[0] for ids in delivery_ids(stored)]
        await spool.settle(done=dids[1:])  # e-1 (the oldest) stays pending
        assert await spool.prune_kept(350.0, 1) == 1, "a batch is at most `limit`"
        assert await spool.prune_kept(350.0, 100) == 1
        assert await spool.prune_kept(350.0, 100) == 0
        assert [k.event_id for k in spool.kept_events(*EVERYTHING)] == ["e-1", "e-4", "e-5"]
        await spool.settle(done=dids[:1])
        assert await spool.prune_kept(350.0, 100) == 1, "delivered now: pruned"
        assert await spool.prune_kept(math.inf, 100) == 2, "retention turned off: every kept event goes"
        assert spool.count_kept(*EVERYTHING) == 0
        # and then an event is finished as without retention
        (ids,) = delivery_ids(await spool.store([kept_event(9, None)]))
        await spool.settle(done=ids)
        assert (spool.depth, spool.count_kept(*EVERYTHING)) == (0, 0)
    finally:
        spool.close()


@pytest.mark.anyio
async def test_on_postgresql_one_router_prunes_at_a_time(pg_dsn: str) -> None:
    """Another router holding the prune lock: this one skips its turn (finds nothing), and prunes after."""
    from event_router.core.spool.postgresql import PostgreSQLSpool

    spool = PostgreSQLSpool(pg_dsn)
    spool.open("exclusive")
    try:
        stored = await spool.store([kept_event(1, 10.0), kept_event(2, 20.0)])
        await spool.settle(done=[ids[0] for ids in delivery_ids(stored)])
        with psycopg.connect(pg_dsn, autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (PRUNE_LOCK,))
            assert await spool.prune_kept(100.0, 500) == 0
            other.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK,))
        assert await spool.prune_kept(100.0, 500) == 2
    finally:
        spool.close()


@pytest.mark.anyio
async def test_a_schema_3_spool_is_upgraded_and_its_events_are_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = SQLiteSpool(path)
    spool.open("exclusive")
    await spool.store([kept_event(1, None)])
    spool.close()
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP INDEX events_received; ALTER TABLE events DROP COLUMN received; "
        "UPDATE meta SET value = '3' WHERE key = 'schema_version';"
    )
    conn.close()
    spool = SQLiteSpool(path)
    spool.open("exclusive")
    try:
        ((did, event),) = due(spool)
        assert event == "e-1"
        await spool.settle(done=[did])
        assert (spool.depth, spool.count_kept(*EVERYTHING)) == (0, 0)
    finally:
        spool.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone() == (0,)
    finally:
        conn.close()


# --- real routers ---------------------------------------------------------------------------------------------


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def events_rows(config: Path, env: dict[str, str]) -> int:
    """Rows in the spool's events table, pending and kept: what the router holds on disk."""
    return spool_rows(config, env, "events")


def pending(admin: int) -> float:
    """The router's `spool_pending_events` gauge, from a real scrape."""
    shown = metric_values(admin, "spool_pending_events")
    assert shown, "no event_router_spool_pending_events in /metrics"
    return shown[0]


def send(port: int, body: dict[str, object]) -> str:
    return send_event(port, body, KEY)


def config_for(tmp_path: Path, port: int, admin: int, spool_line: str, outputs: str, *, retention: str | None) -> Path:
    extra = "\n".join(line for line in (spool_line, f'retention = "{retention}"' if retention else "") if line)
    config = tmp_path / "router.toml"
    config.write_text(router_table(admin, shutdown_timeout="2s", extra=extra) + webhook_input(port) + outputs)
    return config


def crm_output(url: str, name: str = "crm") -> str:
    return http_output(name, f"{url}/in")


@pytest.mark.slow
def test_replay_sends_exactly_the_window_again_with_the_same_event_ids(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    spool_line, spool_env = router_spool
    env = {**ENV, **spool_env}
    port, admin = free_port(), free_port()
    with http_receiver() as crm:
        # one at a time: the replayed deliveries arrive in the order they were requeued
        outputs = crm_output(crm.url) + "concurrency = 1\n" + route('"crm"')
        config = config_for(tmp_path, port, admin, spool_line, outputs, retention="1d")
        c = ("-c", str(config))
        with RouterProcess(config, env=env):
            before = [send(port, numbered_message(n)) for n in range(3)]
            wait_for(lambda: len(crm.requests) == 3, what="the first three delivered")
            since = time.time()
            window = [send(port, numbered_message(n)) for n in range(3, 6)]
            until = time.time()
            after = [send(port, numbered_message(n)) for n in range(6, 8)]
            wait_for(lambda: len(crm.requests) == 8, what="all eight delivered")
            # kept, and none of it pending: the gauge, status, readiness
            wait_for(lambda: pending(admin) == 0, what="nothing pending")
            status = run_cli("status", "--json", *c, env=spool_env)
            assert status.returncode == 0, status.stderr
            assert orjson.loads(status.stdout)["pending_events"] == 0
            assert readyz(admin)[0] == 200
            assert events_rows(config, env) == 8

            dry = run_cli("replay", "--since", iso(since), "--until", iso(until), "--dry-run", *c, env=spool_env)
            assert dry.returncode == 0, dry.stderr
            assert dry.stdout.startswith("dry run: would replay 3 of 3 kept event(s) received "), dry.stdout
            assert dry.stdout.rstrip().endswith(": 3 deliveries (crm 3); nothing was sent"), dry.stdout
            replayed = run_cli("replay", "--since", iso(since), "--until", iso(until), *c, env=spool_env)
            assert replayed.returncode == 0, replayed.stderr
            assert replayed.stdout.startswith("replayed 3 of 3 kept event(s) received "), replayed.stdout
            assert replayed.stdout.rstrip().endswith(": 3 deliveries (crm 3)"), replayed.stdout
            assert "\r" not in replayed.stdout, "no progress bar off a terminal"
            wait_for(lambda: len(crm.requests) == 11, what="the three replayed")
            time.sleep(1.5)  # nothing more comes
            assert len(crm.requests) == 11
            again = [r.headers["Idempotency-Key"] for r in crm.requests[8:]]
            assert again == window, "the window's events, in the order received, with their own ids"
            assert {r.json()["data"]["id"] for r in crm.requests[8:]} == {f"MSG{n:017d}" for n in range(3, 6)}
            assert set(before).isdisjoint(again) and set(after).isdisjoint(again)
            wait_for(lambda: pending(admin) == 0, what="the replayed deliveries done")
            everything = run_cli("replay", "--since", "1h", "--dry-run", *c, env=spool_env)
            assert everything.stdout.startswith("dry run: would replay 8 of 8 "), everything.stdout
            # a time ago written with its minus, after a space (argparse alone takes it for an option)
            minus = run_cli("replay", "--since", "-1h", "--dry-run", *c, env=spool_env)
            assert minus.stdout.startswith("dry run: would replay 8 of 8 "), minus.stderr
            assert events_rows(config, env) == 8


@pytest.mark.slow
def test_replay_to_one_output_and_matching_triggers_only(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    spool_line, spool_env = router_spool
    env = {**ENV, **spool_env}
    port, admin = free_port(), free_port()
    with http_receiver() as crm, http_receiver() as archive:
        outputs = crm_output(crm.url) + crm_output(archive.url, "archive") + route('["crm", "archive"]')
        config = config_for(tmp_path, port, admin, spool_line, outputs, retention="7d")
        c = ("-c", str(config))
        with RouterProcess(config, env=env):
            messages = [send(port, numbered_message(n)) for n in range(2)]
            requests = [send(port, example("consumption.incomingRequestReceived")) for _ in range(2)]
            wait_for(lambda: len(crm.requests) == 4 and len(archive.requests) == 4, what="four events to both")
            replayed = run_cli(
                "replay", "--since", "1h", "--output", "crm", "--match", "transport.*", *c, env=spool_env
            )
            assert replayed.returncode == 0, replayed.stderr
            line = replayed.stdout.strip()
            assert line.startswith("replayed 2 of 4 kept event(s) received "), line
            assert line.endswith(": 2 deliveries (crm 2); not replayed: 2 other triggers"), line
            wait_for(lambda: len(crm.requests) == 6, what="two replayed to crm")
            replayed = run_cli("replay", "--since", "1h", "--match", "consumption.**", *c, env=spool_env)
            assert replayed.stdout.strip().endswith(": 4 deliveries (archive 2, crm 2); not replayed: 2 other triggers")
            wait_for(lambda: len(crm.requests) == 8 and len(archive.requests) == 6, what="two replayed to both")
            time.sleep(1.5)
        assert len(archive.requests) == 6, "nothing more to archive"
        assert sorted(r.headers["Idempotency-Key"] for r in crm.requests[4:6]) == sorted(messages)
        assert sorted(r.headers["Idempotency-Key"] for r in crm.requests[6:]) == sorted(requests)
        assert sorted(r.headers["Idempotency-Key"] for r in archive.requests[4:]) == sorted(requests)

        # what it refuses, before it opens the spool: exit status 2 and why
        for arguments, said in (
            (
                ("--output", "crm2"),
                "replay --output crm2: no output of that name in router.toml (outputs: crm, archive)",
            ),
            (("--match", "transport.message*"), "'*' and '**' must be whole segments between dots"),
            (("--match", ""), "the pattern is empty"),
            (("--until", "2h"), "must be before --until"),
            (("--until", "next tuesday"), "--until: 'next tuesday' is not a time: give an ISO 8601 time"),
        ):
            refused = run_cli("replay", "--since", "1h", *arguments, *c, env=spool_env)
            assert refused.returncode == 2 and said in refused.stderr, (arguments, refused.stderr)
            assert refused.stdout == ""
        refused = run_cli("replay", "--since", "3600", *c, env=spool_env)
        assert refused.returncode == 2, refused.stderr
        assert "'3600' is ambiguous: write 3600s for that long ago, or @3600 for a Unix time" in refused.stderr


@pytest.mark.slow
def test_expired_kept_events_are_pruned(tmp_path: Path, router_spool: tuple[str, dict[str, str]]) -> None:
    spool_line, spool_env = router_spool
    env = {**ENV, **spool_env}
    port, admin = free_port(), free_port()
    with http_receiver() as crm:
        outputs = crm_output(crm.url) + route('"crm"')
        config = config_for(tmp_path, port, admin, spool_line, outputs, retention="6s")
        c = ("-c", str(config))
        with RouterProcess(config, env=env):
            for n in range(3):
                send(port, numbered_message(n))
            wait_for(lambda: len(crm.requests) == 3, what="three delivered")
            listed = run_cli("replay", "--since", "1h", "--dry-run", *c, env=spool_env)
            assert listed.stdout.startswith("dry run: would replay 3 of 3 "), listed.stdout
            assert events_rows(config, env) == 3
            # a tenth of the retention apart (at least a second): gone within a few seconds of expiring
            wait_for(lambda: events_rows(config, env) == 0, timeout=20, interval=0.2, what="kept events pruned")
            listed = run_cli("replay", "--since", "1h", "--dry-run", *c, env=spool_env)
            assert listed.stdout.startswith("dry run: would replay 0 of 0 "), listed.stdout


@pytest.mark.slow
def test_without_retention_nothing_is_kept(tmp_path: Path, router_spool: tuple[str, dict[str, str]]) -> None:
    spool_line, spool_env = router_spool
    env = {**ENV, **spool_env}
    port, admin = free_port(), free_port()
    with http_receiver() as crm:
        outputs = crm_output(crm.url) + route('"crm"')
        config = config_for(tmp_path, port, admin, spool_line, outputs, retention=None)
        c = ("-c", str(config))
        with RouterProcess(config, env=env):
            for n in range(3):
                send(port, numbered_message(n))
            wait_for(lambda: len(crm.requests) == 3, what="three delivered")
            wait_for(lambda: events_rows(config, env) == 0, what="every delivered event forgotten")
            replayed = run_cli("replay", "--since", "1h", *c, env=spool_env)
            assert replayed.returncode == 0, replayed.stderr
            assert replayed.stdout.startswith("replayed 0 of 0 kept event(s) received "), replayed.stdout
            assert "router.toml keeps nothing ([router] retention is 0)" in replayed.stderr
            time.sleep(1.5)
            assert len(crm.requests) == 3


# --- the command's pace and progress bar -----------------------------------------------------------------------


def run_in_terminal(*args: str, timeout: float = 60) -> tuple[int, str]:
    """`event-router ARGS` with stdout on a pseudo-terminal: (exit status, what it wrote there)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "event_router", *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    os.close(follower)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end closed: the command exited
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(leader)
    code = proc.wait(10)
    return code, out.decode(errors="replace")


@pytest.mark.slow
def test_replay_keeps_its_rate_and_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    with http_receiver() as crm:
        outputs = crm_output(crm.url) + route('"crm"')
        config = config_for(tmp_path, port, admin, "", outputs, retention="1d")
        with RouterProcess(config, env=ENV):
            for n in range(12):
                send(port, numbered_message(n))
            wait_for(lambda: len(crm.requests) == 12, what="twelve delivered")
            started = time.monotonic()
            code, shown = run_in_terminal("replay", "--since", "1h", "--rate", "6", "-c", str(config))
            took = time.monotonic() - started
            assert code == 0, shown
            assert took >= 1.8, f"12 events at 6 a second took {took:.2f}s"
            assert "\r\x1b[K[" in shown and "read, " in shown, "a bar redrawn in place"
            assert shown.rstrip().split("\r\x1b[K")[-1].startswith("replayed 12 of 12 kept event(s) received ")
            wait_for(lambda: len(crm.requests) == 24, what="twelve replayed")

            # Ctrl-C: how far it got, and where to go on from
            interrupted = subprocess.Popen(
                [sys.executable, "-m", "event_router", "replay", "--since", "1h", "--rate", "2", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            wait_for(lambda: len(crm.requests) >= 26, what="two events of the second replay")
            interrupted.send_signal(signal.SIGINT)
            out, err = interrupted.communicate(timeout=30)
            assert interrupted.returncode == 130, err
            done = int(out.split("interrupted after replaying ", 1)[1].split(" ", 1)[0])
            assert 2 <= done < 12, out
            since = err.split("to replay the rest: event-router replay --since ", 1)[1].split(" ", 1)[0]
            rest = run_cli("replay", "--since", since, "--dry-run", "-c", str(config))
            assert rest.stdout.startswith(f"dry run: would replay {12 - done} of {12 - done} "), (rest.stdout, out)


@pytest.mark.slow
def test_replay_leaves_room_for_live_events(tmp_path: Path) -> None:
    """While the output is down, a replay stops at half of its `max_pending` (and of `max_pending_events`): the
    webhook keeps taking events, and the replay goes on once the router delivered."""
    port, admin = free_port(), free_port()
    with http_receiver() as crm:
        outputs = (
            crm_output(crm.url)
            + 'max_pending = 8\nretry = { initial_backoff = "50ms", max_backoff = "100ms", max_attempts = 100000 }\n'
            + route('"crm"')
        )
        config = config_for(tmp_path, port, admin, "max_pending_events = 10", outputs, retention="1d")
        with RouterProcess(config, env=ENV):
            for n in range(12):  # one at a time: the spool's 10 must not fill
                send(port, numbered_message(n))
                wait_for(lambda: pending(admin) == 0, what=f"event {n} delivered")
            crm.respond(503)
            replay = subprocess.Popen(
                [sys.executable, "-m", "event_router", "replay", "--since", "1h", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                wait_for(lambda: pending(admin) == 4, what="half of crm's max_pending replayed")
                seen: list[float] = []
                until = time.monotonic() + 3
                while time.monotonic() < until:
                    seen.append(pending(admin))
                    time.sleep(0.05)
                assert replay.poll() is None, "the replay waits for room"
                assert max(seen) == 4, seen
                send(port, numbered_message(100))  # a live event still goes in
                crm.respond(200)
                out, err = replay.communicate(timeout=60)
            finally:
                if replay.poll() is None:
                    replay.kill()
                    replay.wait()
            assert replay.returncode == 0, err
            assert out.startswith("replayed 12 of 12 kept event(s) received "), out
            assert "replay: waiting for the router to deliver: 4 events pending" in err, err
            wait_for(lambda: pending(admin) == 0, what="everything delivered")
            sent = [r.headers["Idempotency-Key"] for r in crm.requests]
            assert len(set(sent)) == 13
