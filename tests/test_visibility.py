"""What the Connector cannot see shows on the router: refused requests, unknown triggers, delivery outcomes.

(`check`'s warnings and errors about triggers and keys are tested in test_config.py.)

Real router processes (JSON logs), real HTTP on loopback, the real admin `/metrics`.
"""

from __future__ import annotations

import http.client
import re
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from event_router.core.spool import DeadLetterFilter
from event_router.core.spool.sqlite import SCHEMA_VERSION, SQLiteSpool
from event_router.testing import (
    RouterProcess,
    example,
    free_port,
    http_receiver,
    post,
    router_table,
    run_cli,
    wait_for,
    webhook_input,
)

KEY = "test-key-123"


def router_toml(tmp: Path, port: int, admin: int, *, outputs: str = "", routes: str = "") -> str:
    webhook = webhook_input(port, api_key=f'"{KEY}"', extra="max_body_bytes = 1024")
    return f"""
{router_table(admin, data_dir=f"{tmp}/var")}{webhook}[outputs.archive]
type = "file"
path = "{tmp}/out/events.jsonl"
{outputs}
[[routes]]
name = "all"
match = {{ trigger = ["transport.**", "consumption.**"] }}
to = ["archive"]
{routes}
"""


def metric(admin: int, name: str, labels: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf"^event_router_{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def records(router: RouterProcess, message: str) -> list[dict[str, Any]]:
    return [r for r in router.log_records() if str(r.get("msg", "")).startswith(message)]


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Any]:
    routers: list[RouterProcess] = []

    def start(text: str) -> RouterProcess:
        config = tmp_path / "router.toml"
        config.write_text(text)
        router = RouterProcess(config).start()
        routers.append(router)
        return router

    yield start
    for router in routers:
        if router.proc is not None and router.proc.poll() is None:
            router.terminate()


# --- refused requests ------------------------------------------------------------------------------------


def test_refused_requests_are_logged_with_the_client_and_counted(started: Any, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    router = started(router_toml(tmp_path, port, admin))
    url = f"http://127.0.0.1:{port}/events"
    mail = example("transport.messageReceived")

    status, body, _ = post(url, mail, {"x-api-key": "wrong"})
    assert (status, body["error"]) == (401, "wrong API key in header x-api-key")
    refused = router.wait_log("request refused")
    assert refused["level"] == "warning"
    assert (refused["remote"], refused["status"], refused["input"]) == ("127.0.0.1", 401, "connector")
    assert refused["error"] == "wrong API key in header x-api-key"
    assert KEY not in router.logs() and "wrong" not in refused["msg"]
    assert metric(admin, "requests_rejected_total", 'input="connector",status="401"') == 1.0

    # what is answered before any check is counted as well
    assert post(f"http://127.0.0.1:{port}/other", mail, {"x-api-key": KEY})[0] == 404
    assert post(url, b"x" * 4096, {"x-api-key": KEY})[0] == 413
    wait_for(lambda: metric(admin, "requests_rejected_total", 'input="connector",status="413"') == 1.0)
    assert metric(admin, "requests_rejected_total", 'input="connector",status="404"') == 1.0
    by_status = {r["status"]: r for r in records(router, "request refused")}
    assert by_status[404]["remote"] == by_status[413]["remote"] == "127.0.0.1", by_status
    assert by_status[413]["error"] == "body larger than 1024 bytes"

    # an accepted event is not a refusal
    assert post(url, mail, {"x-api-key": KEY})[0] == 202
    assert metric(admin, "requests_rejected_total", 'input="connector",status="202"') is None


def test_a_flood_of_bad_requests_writes_a_bounded_number_of_lines(started: Any, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    router = started(router_toml(tmp_path, port, admin))
    body = orjson.dumps(example("transport.messageReceived"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(1000):
            conn.request("POST", "/events", body, {"Content-Type": "application/json", "x-api-key": "guess"})
            response = conn.getresponse()
            response.read()
            assert response.status == 401
    finally:
        conn.close()
    assert metric(admin, "requests_rejected_total", 'input="connector",status="401"') == 1000.0
    lines = records(router, "request refused")
    assert 1 <= len(lines) <= 2, lines


def test_log_throttle_says_how_many_it_held_back() -> None:
    from event_router.api import LogThrottle

    throttle = LogThrottle(window=60, max_lines=3, max_keys=100)
    assert throttle.admit((401, "10.0.0.1"), now=0) == 0
    assert [throttle.admit((401, "10.0.0.1"), now=t) for t in range(1, 60)] == [None] * 59
    assert throttle.admit((401, "10.0.0.1"), now=60) == 59, "the first line after the window counts the rest"
    # many clients: at most max_lines lines a window in all; the others' counts come with their next line
    assert [throttle.admit((401, f"10.0.1.{i}"), now=61) for i in range(5)] == [0, 0, None, None, None]
    assert throttle.admit((401, "10.0.1.4"), now=121) == 1


# --- unknown triggers ------------------------------------------------------------------------------------


def test_unknown_trigger_is_warned_once_with_a_suggestion_and_counted(started: Any, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    router = started(router_toml(tmp_path, port, admin))
    typo = {**example("transport.messageReceived"), "trigger": "transport.messageRecieved"}
    for _ in range(3):
        status, body, _ = post(f"http://127.0.0.1:{port}/events", typo, {"x-api-key": KEY})
        assert status == 202, body
    wait_for(lambda: metric(admin, "unknown_triggers_total", 'input="connector"') == 3.0)
    (warning,) = records(router, "unknown trigger")
    assert warning["msg"] == (
        "unknown trigger 'transport.messageRecieved': no schema knows it; did you mean 'transport.messageReceived'?"
    )
    assert (warning["level"], warning["trigger"], warning["input"]) == (
        "warning",
        "transport.messageRecieved",
        "connector",
    )
    assert warning["event_id"]


# --- deliveries and dead letters -------------------------------------------------------------------------

CRM = """
[outputs.crm]
type = "http"
url = "{url}/hook"
[outputs.crm.retry]
initial_backoff = "50ms"
max_backoff = "50ms"
"""
TO_CRM = """
[[routes]]
name = "mail to crm"
match = { trigger = ["transport.messageReceived"] }
to = ["crm"]
"""


def test_delivery_log_lines_carry_the_event_route_output_and_dead_letter(started: Any, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    with http_receiver() as receiver:
        receiver.respond(503, 200)
        router = started(router_toml(tmp_path, port, admin, outputs=CRM.format(url=receiver.url), routes=TO_CRM))
        url = f"http://127.0.0.1:{port}/events"
        first = post(url, example("transport.messageReceived"), {"x-api-key": KEY})[1]["id"]
        retried = router.wait_log("delivery failed, will retry")
        recovered = router.wait_log("delivered after 2 attempts")
        receiver.respond(400)
        second = post(url, example("transport.messageReceived"), {"x-api-key": KEY})[1]["id"]
        dead = router.wait_log("delivery dead-lettered")
    fields = {"trigger": "transport.messageReceived", "route": "mail to crm", "output": "crm"}
    # a delivery's first failure is a warning: an outage shows in a warning-level log
    assert retried["level"] == "warning" and {**retried, **fields, "event_id": first} == retried, retried
    assert recovered["level"] == "info" and {**recovered, **fields, "event_id": first} == recovered, recovered
    assert recovered["delivery"] == retried["delivery"]
    assert dead["level"] == "warning" and {**dead, **fields, "event_id": second} == dead, dead
    assert dead["dead_letter"] == 1 and dead["reason"] == "permanent"
    # delivery ids never repeat, though the first delivery was finished (and forgotten) before the second
    assert dead["delivery"] > recovered["delivery"], (dead, recovered)
    # the first success after failures is the only success logged: an outage's end, not every delivery
    assert len(records(router, "delivered after")) == 1


def test_a_dead_letter_after_a_purge_gets_a_fresh_id(started: Any, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    with http_receiver() as receiver:
        receiver.respond(400)
        config_text = router_toml(tmp_path, port, admin, outputs=CRM.format(url=receiver.url), routes=TO_CRM)
        router = started(config_text)
        url = f"http://127.0.0.1:{port}/events"
        assert post(url, example("transport.messageReceived"), {"x-api-key": KEY})[0] == 202
        assert router.wait_log("delivery dead-lettered")["dead_letter"] == 1
        purged = run_cli("dlq", "purge", "--all", "--yes", "-c", str(tmp_path / "router.toml"))
        assert purged.returncode == 0, purged.stderr
        assert post(url, example("transport.messageReceived"), {"x-api-key": KEY})[0] == 202
        assert router.wait_log("delivery dead-lettered", count=2)["dead_letter"] == 2
    listing = orjson.loads(run_cli("dlq", "list", "--json", "-c", str(tmp_path / "router.toml")).stdout)
    assert [d["id"] for d in listing] == [2], listing


#: the spool's tables as schema 1 made them: ids were the largest plus one, so freed ids came back
_SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, trigger TEXT NOT NULL, stored_at REAL NOT NULL,
    body BLOB NOT NULL);
CREATE TABLE deliveries (did INTEGER PRIMARY KEY, seq INTEGER NOT NULL REFERENCES events(seq), output TEXT NOT NULL,
    route TEXT NOT NULL, payload BLOB, attempts INTEGER NOT NULL DEFAULT 0, due REAL NOT NULL, first_at REAL NOT NULL,
    last_error TEXT);
CREATE INDEX deliveries_due ON deliveries(output, due, did);
CREATE INDEX deliveries_seq ON deliveries(seq);
CREATE TABLE dead_letters (dlid INTEGER PRIMARY KEY, event_id TEXT, trigger TEXT, source TEXT, output TEXT, route TEXT,
    reason TEXT NOT NULL, error TEXT, attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, body BLOB NOT NULL,
    payload BLOB);
CREATE INDEX dead_letters_output ON dead_letters(output, dlid);
CREATE INDEX dead_letters_trigger ON dead_letters(trigger, dlid);
CREATE INDEX dead_letters_created ON dead_letters(created_at);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO events VALUES (7, 'e-7', 'transport.messageReceived', 0, '{"id": "e-7"}');
INSERT INTO deliveries VALUES (40, 7, 'crm', 'r', NULL, 2, 0, 0, '503');
INSERT INTO dead_letters VALUES (5, 'e-5', 't', 'connector', 'crm', 'r', 'permanent', '400', 1, 0, '{}', NULL);
"""


@pytest.mark.anyio
async def test_a_schema_1_spool_is_upgraded_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    old = sqlite3.connect(path)
    old.executescript(_SCHEMA_1)
    old.close()
    spool = SQLiteSpool(path)
    spool.open("exclusive")
    try:
        (pending,) = spool.fetch_due("crm", 1.0, 10, ())
        assert (pending.did, pending.event_id, pending.attempts) == (40, "e-7", 2)
        assert spool.dead_letter_count() == 1
        await spool.settle(done=[40])
        assert spool.count_dead_letters(DeadLetterFilter()) == (1, 5)
        assert spool.purge_dead_letters(DeadLetterFilter()) == 1
        from event_router.core.spool import NewDelivery, StoreDeadLetter, StoreEvent

        stored = await spool.store(
            [
                StoreEvent("e-8", "transport.messageReceived", b'{"id": "e-8"}', [NewDelivery("crm", "r", None)]),
                StoreDeadLetter("validation", "bad", b"{}"),
            ]
        )
        assert stored == [[41], 6], "ids go on from the largest the old tables held, never back to 1"
    finally:
        spool.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        tables = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
        assert "announced" in tables, "schema 3's table of announced keys"
        assert "output_states" in tables, "schema 4's table of paused outputs and open breakers"
        assert "received" in {row[1] for row in conn.execute("PRAGMA table_info(events)")}, "schema 5's column"
        assert "ordering_key" in {row[1] for row in conn.execute("PRAGMA table_info(deliveries)")}, "schema 6's"
        assert "AUTOINCREMENT" in tables["deliveries"] and "AUTOINCREMENT" in tables["dead_letters"]
        assert not any(name.endswith("_v1") for name in tables), tables
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {
            "deliveries_due",
            "deliveries_seq",
            "deliveries_key",
            "dead_letters_output",
            "dead_letters_created",
        } <= indexes
        assert "events_received" in indexes
    finally:
        conn.close()


def test_an_operator_command_leaves_a_schema_1_spool_to_the_router(tmp_path: Path) -> None:
    """An older router may still run on the spool: `dlq` and `status` neither upgrade it nor write to it;
    `dlq` says why it refuses, and the router upgrades it when it starts."""
    (tmp_path / "var").mkdir()
    path = tmp_path / "var" / "spool.db"
    old = sqlite3.connect(path)
    old.execute("PRAGMA journal_mode = WAL")  # as a router left it
    old.executescript(_SCHEMA_1)
    before = list(old.iterdump())
    old.close()
    (tmp_path / "router.toml").write_text(router_toml(tmp_path, free_port(), free_port()))
    listing = run_cli("dlq", "list", "-c", str(tmp_path / "router.toml"))
    assert listing.returncode == 1, listing
    assert listing.stderr.strip() == (
        f"error: spool schema 1 is older than this router's: start the upgraded router once to upgrade it ({path})"
    ), listing.stderr
    status = run_cli("status", "--json", "-c", str(tmp_path / "router.toml"))
    assert status.returncode == 0, status.stderr
    assert orjson.loads(status.stdout)["pending_events"] == 1
    conn = sqlite3.connect(path)
    try:
        assert list(conn.iterdump()) == before, "an operator command changed the spool"
    finally:
        conn.close()


@pytest.mark.anyio
async def test_the_upgrade_moves_rows_by_column_name(tmp_path: Path) -> None:
    """A schema-1 table whose columns are in another order than the new table's keeps each value in its column."""
    path = tmp_path / "spool.db"
    old = sqlite3.connect(path)
    old.executescript(
        _SCHEMA_1.replace(
            "CREATE TABLE deliveries (did INTEGER PRIMARY KEY, seq INTEGER NOT NULL REFERENCES events(seq), "
            "output TEXT NOT NULL,\n    route TEXT NOT NULL,",
            "CREATE TABLE deliveries (did INTEGER PRIMARY KEY, seq INTEGER NOT NULL REFERENCES events(seq), "
            "route TEXT NOT NULL,\n    output TEXT NOT NULL,",
        ).replace(
            "INSERT INTO deliveries VALUES (40, 7, 'crm', 'r',", "INSERT INTO deliveries VALUES (40, 7, 'r', 'crm',"
        )
    )
    old.close()
    spool = SQLiteSpool(path)
    spool.open("exclusive")
    try:
        (pending,) = spool.fetch_due("crm", 1.0, 10, ())
        assert (pending.did, pending.output, pending.route, pending.attempts) == (40, "crm", "r", 2)
        assert spool.pending_outputs() == {"crm": 1}
    finally:
        spool.close()


def test_the_routers_logging_is_intact_once_the_webhook_serves(started: Any, tmp_path: Path) -> None:
    """A control: creating granian's server runs `logging.config.dictConfig`, which by default closes every
    handler and adds its own on stdout; the router passes an incremental config, so its JSON lines, at its
    level, are all that is written, before and after the webhook starts serving."""
    port, admin = free_port(), free_port()
    text = router_toml(tmp_path, port, admin).replace("[router]\n", '[router]\nlog_level = "warning"\n', 1)
    router = started(text)
    assert post(f"http://127.0.0.1:{port}/events", example("transport.messageReceived"), {"x-api-key": "no"})[0] == 401
    refused = router.wait_log("request refused")
    assert (refused["level"], refused["logger"]) == ("warning", "event_router.inputs.connector")
    lines = router.logs().splitlines()
    assert lines and all(line.startswith("{") for line in lines), lines
    levels = {record["level"] for record in router.log_records()}
    assert levels <= {"warning", "error"}, levels  # the router's own level stays what its config says
    assert not [r for r in router.log_records() if "granian" in str(r.get("logger"))]
