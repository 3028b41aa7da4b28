"""The spool gauges on `/metrics`: right after every kind of change, and read without a statement on the loop.

The gauges come from counts the spool's writer thread keeps as it commits (`SQLiteSpool.counts`), counted again
from the database when another process (`dlq replay`, `dlq purge`) changed the spool. A scrape at a large
backlog used to run COUNT(*)/GROUP BY on the event loop (tens of ms each, every request waiting).
"""

from __future__ import annotations

import re
import sqlite3
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from event_router.core.spool.sqlite import OLDEST_PENDING, PENDING_EVENTS, SQLiteSpool
from event_router.testing import (
    RouterProcess,
    delivery_ids,
    example,
    free_port,
    http_receiver,
    post,
    run_cli,
    wait_for,
)

pytestmark = pytest.mark.anyio
KEY = "test-key-metrics"
GAUGE = re.compile(r'^event_router_(\w+?)(?:\{output="([^"]*)"\})? (\S+)$', re.MULTILINE)


def scrape(admin: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=10) as response:
        text: str = response.read().decode()
        return text


def spool_gauges(admin: int) -> dict[str, Any]:
    """The spool's gauges from a real scrape: pending per output, dead letters stored, pending events."""
    found: dict[str, Any] = {"pending": {}}
    for name, output, value in GAUGE.findall(scrape(admin)):
        if name == "deliveries_pending" and float(value):
            found["pending"][output] = int(float(value))
        elif name in ("dead_letters_stored", "spool_pending_events"):
            found[name] = int(float(value))
        elif name == "spool_oldest_pending_age_seconds":
            found["age"] = float(value)
    return found


def spool_truth(db: Path) -> dict[str, Any]:
    """The same numbers counted in the spool file itself."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {
            "pending": dict(conn.execute("SELECT output, COUNT(*) FROM deliveries GROUP BY output")),
            "dead_letters_stored": conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0],
            "spool_pending_events": conn.execute(PENDING_EVENTS).fetchone()[0],
        }
    finally:
        conn.close()


def fill(db: Path, pending: int, dead: int, *, output: str = "held") -> None:
    """A spool with `pending` events (one delivery each to `output`) and `dead` dead letters, by SQL (fast)."""
    spool = SQLiteSpool(db)
    spool.open()  # the schema
    spool.close()
    conn = sqlite3.connect(db, isolation_level=None)
    now = time.time() - 30
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO events (seq, id, trigger, stored_at, body) VALUES (?, ?, 'transport.messageReceived', ?, '{}')",
        ((seq, f"e{seq}", now) for seq in range(1, pending + 1)),
    )
    conn.executemany(
        "INSERT INTO deliveries (seq, output, route, due, first_at) VALUES (?, ?, 'r', ?, ?)",
        ((seq, output, now + 86400, now) for seq in range(1, pending + 1)),
    )
    conn.executemany(
        "INSERT INTO dead_letters (reason, created_at, body) VALUES ('permanent', ?, '{}')",
        ((now,) for _ in range(dead)),
    )
    conn.execute("COMMIT")
    conn.close()


# --- no statement on the loop -------------------------------------------------------------------------------


#: runs the router (`python -c`) with every statement on the loop's thread written to $ROUTER_SQL_TRACE: the
#: router's event loop runs on the main thread (anyio.run), and every spool connection comes from sqlite3.connect
SQL_ON_THE_LOOP = """
import os, runpy, sqlite3, sys, threading
loop_thread = threading.get_ident()
trace = open(os.environ["ROUTER_SQL_TRACE"], "a", buffering=1)
connect = sqlite3.connect
def traced(*args, **kwargs):
    conn = connect(*args, **kwargs)
    conn.set_trace_callback(
        lambda sql: threading.get_ident() == loop_thread and trace.write(" ".join(sql.split()) + "\\n")
    )
    return conn
sqlite3.connect = traced
sys.argv[0] = "event_router"
runpy.run_module("event_router", run_name="__main__")
"""
#: what counting the spool takes: none of it may run on the loop once the router is ready
COUNTING = re.compile(r"COUNT\(|GROUP BY|MIN\(|MAX\(", re.IGNORECASE)


def test_scrapes_readyz_and_recounts_run_no_count_on_the_event_loop(tmp_path: Path) -> None:
    """A router process with 20,000 pending events and 300 dead letters, its loop's statements traced:
    scrapes, /readyz and the recount after a `dlq purge` by another process count nothing on the loop (a
    scrape used to run COUNT(*)/GROUP BY there, and every webhook request waited behind it)."""
    fill(tmp_path / "var" / "spool.db", 20_000, 300)
    admin = free_port()
    config = tmp_path / "router.toml"
    config.write_text(
        f"""
[router]
data_dir = "{tmp_path}/var"
[router.admin]
listen = "127.0.0.1:{admin}"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{free_port()}"
api_key = "{KEY}"
[outputs.archive]
type = "file"
path = "{tmp_path}/out.jsonl"
[[routes]]
name = "all"
to = ["archive"]
"""
    )
    trace = tmp_path / "loop-sql.txt"
    program = (sys.executable, "-c", SQL_ON_THE_LOOP)
    router = RouterProcess(config, program=program, env={"ROUTER_SQL_TRACE": str(trace)}).start()
    try:
        assert "STATUS=20000 events pending; inputs ready 1/1; 0 dead-lettered since start" in router.messages
        ready_at = trace.stat().st_size  # opening the spool counts, once, before the router serves anything
        for _ in range(10):
            metrics = scrape(admin)
        assert '"ready":true' in scrape(admin, "/readyz").replace(" ", "")
        assert 'event_router_deliveries_pending{output="held"} 20000.0' in metrics
        assert "event_router_dead_letters_stored 300.0" in metrics
        assert "event_router_spool_pending_events 20000.0" in metrics
        age = float(re.search(r"^event_router_spool_oldest_pending_age_seconds (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
        assert 25 < age < 120, metrics
        purged = run_cli("dlq", "purge", "--all", "--yes", "-c", str(config))
        assert purged.returncode == 0, purged.stderr
        wait_for(lambda: spool_gauges(admin)["dead_letters_stored"] == 0, timeout=5, what="the recount after purge")
        # the archive worker's poll for due deliveries runs on the loop: the trace sees the loop's statements
        wait_for(lambda: "FROM deliveries WHERE output = 'archive'" in trace.read_text()[ready_at:], what="a poll")
    finally:
        router.terminate()
    on_loop = trace.read_text()[ready_at:].splitlines()
    assert [sql for sql in on_loop if COUNTING.search(sql)] == [], on_loop


def test_oldest_pending_is_an_index_lookup(tmp_path: Path) -> None:
    """What the writer thread reads after the oldest delivery is finished: two rowid searches, no scan,
    whatever the backlog (the spool's `status` command reads it too)."""
    db = tmp_path / "spool.db"
    fill(db, 1000, 0)
    conn = sqlite3.connect(db)
    plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + OLDEST_PENDING)]
    assert plan and all(step.startswith(("SEARCH", "SCALAR SUBQUERY")) for step in plan), plan
    assert conn.execute(OLDEST_PENDING).fetchone() == (pytest.approx(time.time() - 30, abs=5), 1)
    conn.execute("DELETE FROM deliveries")
    conn.commit()
    assert conn.execute(OLDEST_PENDING).fetchone() is None
    conn.close()


async def test_counts_follow_the_spools_own_writes(tmp_path: Path) -> None:
    """Stores, deliveries, retries, dead letters, a failed group and a clock rebase: after each commit,
    `counts` is what the database holds."""
    from event_router.core.spool import NewDelivery, StoreDeadLetter, StoreEvent

    db = tmp_path / "spool.db"
    spool = SQLiteSpool(db)
    spool.open("exclusive")

    def check() -> None:
        truth = spool_truth(db)
        oldest = sqlite3.connect(db).execute(OLDEST_PENDING).fetchone()
        assert dict(spool.counts.pending) == truth["pending"]
        assert spool.counts.dead_letters == truth["dead_letters_stored"]
        assert spool.depth == truth["spool_pending_events"]
        assert spool.counts.oldest_first_at == (None if oldest is None else oldest[0])

    try:
        check()
        dids = await spool.store(
            [
                StoreEvent(f"e{i}", "t", b"{}", [NewDelivery("a", "r", None), NewDelivery("b", "r", None)])
                for i in range(5)
            ]
            + [StoreDeadLetter("validation", "bad", b"{}")]
        )
        check()
        first = [d for item in delivery_ids(dids[:5]) for d in item]
        await spool.settle(
            done=first[:3], retry=[(first[3], 1, 1e12, "HTTP 503")], dead=[(first[4], "permanent", "400", 1)]
        )
        check()
        assert spool.counts.pending == {"a": 2, "b": 4} and spool.counts.dead_letters == 2

        def boom(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM deliveries")
            raise RuntimeError("disk on fire")

        with pytest.raises(Exception, match="disk on fire"):
            await spool._write(boom)
        check()
        before = spool.counts.oldest_first_at
        assert before is not None
        await spool.rebase(-100.0)
        check()
        assert spool.counts.oldest_first_at == pytest.approx(before - 100)
        await spool.settle(done=[first[3], *first[5:]])
        check()
        assert spool.counts.pending == {} and spool.counts.oldest_first_at is None and spool.depth == 0
    finally:
        spool.close()


# --- a real router beside the dlq commands ------------------------------------------------------------------


def router_toml(tmp: Path, port: int, admin: int, crm: str, closed: int, *, replay_route: bool = False) -> str:
    extra = (
        """
[[routes]]
name = "replayed"
match = { trigger = ["consumption.**"] }
to = ["slow"]
"""
        if replay_route
        else ""
    )
    return f"""
[router]
data_dir = "{tmp}/var"
unmatched = "dead-letter"
[router.admin]
listen = "127.0.0.1:{admin}"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
api_key = "{KEY}"
[outputs.archive]
type = "file"
path = "{tmp}/out/events.jsonl"
[outputs.crm]
type = "http"
url = "{crm}/hooks"
[outputs.slow]
type = "http"
url = "http://127.0.0.1:{closed}/down"
retry = {{ initial_backoff = "1h", max_backoff = "1h", max_attempts = 100, max_age = "7d" }}
[[routes]]
name = "messages"
match = {{ trigger = ["transport.**"] }}
to = ["archive", "crm", "slow"]
{extra}"""


def test_gauges_match_the_spool_across_deliveries_dead_letters_dlq_commands_and_restart(tmp_path: Path) -> None:
    port, admin, closed = free_port(), free_port(), free_port()
    db = tmp_path / "var" / "spool.db"
    with http_receiver() as crm:
        crm.respond(400)  # permanent: each delivery to crm becomes a dead letter
        config = tmp_path / "router.toml"
        config.write_text(router_toml(tmp_path, port, admin, crm.url, closed))
        # the same spool, and a route for the unmatched dead letters to be replayed through
        replay_config = tmp_path / "replay.toml"
        replay_config.write_text(router_toml(tmp_path, port, admin, crm.url, closed, replay_route=True))
        hook = f"http://127.0.0.1:{port}/events"
        headers = {"x-api-key": KEY}

        def settled(expected: dict[str, Any]) -> None:
            """The gauges equal the spool file's own counts and what the steps so far should have left."""

            def same() -> bool:
                gauges, truth = spool_gauges(admin), spool_truth(db)
                gauges.pop("age", None)
                return gauges == truth == expected

            wait_for(same, timeout=10, what=f"gauges {spool_gauges(admin)} == spool {spool_truth(db)} == {expected}")

        router = RouterProcess(config).start()
        try:
            for _ in range(3):
                assert post(hook, example("transport.messageReceived"), headers)[0] == 202
            for _ in range(2):  # no route: dead letters
                assert post(hook, example("consumption.incomingRequestReceived"), headers)[0] == 422
            settled({"pending": {"slow": 3}, "dead_letters_stored": 5, "spool_pending_events": 3})
            wait_for(lambda: len(crm.requests) == 3, what="crm tried")
            # an output with nothing pending has its series at 0 (absent, a dashboard shows no data)
            assert 'event_router_deliveries_pending{output="crm"} 0.0' in scrape(admin).splitlines()
            age = spool_gauges(admin)["age"]
            assert 0 < age < 60

            crm.respond(200)
            replayed = run_cli("dlq", "replay", "-c", str(config), "--output", "crm")
            assert replayed.returncode == 0, replayed.stderr
            wait_for(lambda: len(crm.requests) == 6, what="replayed deliveries to crm")
            settled({"pending": {"slow": 3}, "dead_letters_stored": 2, "spool_pending_events": 3})

            purged = run_cli("dlq", "purge", "-c", str(config), "--reason", "no_route")
            assert purged.returncode == 0, purged.stderr
            settled({"pending": {"slow": 3}, "dead_letters_stored": 0, "spool_pending_events": 3})

            for _ in range(2):
                assert post(hook, example("consumption.incomingRequestReceived"), headers)[0] == 422
            settled({"pending": {"slow": 3}, "dead_letters_stored": 2, "spool_pending_events": 3})
            replayed = run_cli("dlq", "replay", "-c", str(replay_config), "--reason", "no_route")
            assert replayed.returncode == 0, replayed.stderr
            settled({"pending": {"slow": 5}, "dead_letters_stored": 0, "spool_pending_events": 5})
        finally:
            router.terminate()

        router = RouterProcess(config).start()
        try:
            settled({"pending": {"slow": 5}, "dead_letters_stored": 0, "spool_pending_events": 5})
            assert spool_gauges(admin)["age"] >= age
        finally:
            router.terminate()


def test_status_and_the_gauges_count_pending_events_alike(tmp_path: Path) -> None:
    """`status` and `spool_pending_events` share one definition of pending (an event with a delivery left):
    a stray event row without deliveries counts in neither."""
    port, admin, closed = free_port(), free_port(), free_port()
    db = tmp_path / "var" / "spool.db"
    fill(db, 3, 0)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO events (id, trigger, stored_at, body) VALUES ('stray', 't', 0, '{}')")
    conn.close()
    config = tmp_path / "router.toml"
    config.write_text(router_toml(tmp_path, port, admin, f"http://127.0.0.1:{closed}", closed))
    router = RouterProcess(config).start()
    try:
        status = run_cli("status", "--json", "-c", str(config))
        assert status.returncode == 0, status.stderr
        shown = orjson.loads(status.stdout)
        assert shown["pending_events"] == spool_gauges(admin)["spool_pending_events"] == 3, shown
        assert shown["outputs"]["held"]["pending"] == spool_gauges(admin)["pending"]["held"] == 3
    finally:
        router.terminate()
