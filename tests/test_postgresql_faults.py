"""A router on the PostgreSQL spool while the database goes away mid-stream (#18): its connections killed
(`pg_terminate_backend`), then the database refusing every connection for a few seconds, as during a
restart of the server. Webhooks stream in the whole time: what was acknowledged is delivered, what could
not be stored is refused (503), /readyz says the spool is why, and delivery resumes by itself. Below them,
the spool itself: each of its connections killed while idle, and a session ended during its commit."""

from __future__ import annotations

import os
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from event_router.core.spool import NewDelivery, StoreEvent
from event_router.core.spool.postgresql import PostgreSQLSpool
from event_router.testing import (
    RouterProcess,
    example,
    free_port,
    http_receiver,
    post,
    readyz,
    wait_for,
)
from router_helpers import postgresql_router, status_json

KEY = "pg-faults-key"
#: the router's lease: renewed every second, so renewals run (and fail) inside the outage
LEASE = "3s"
#: how long the database refuses connections: a restart of a small server, long enough for /readyz to show it
OUTAGE = 2.5


def _kill_sessions(server: str, database: str) -> int:
    """Terminate every session on `database` (the router's, only: the scratch database is this test's own);
    how many. Run from the maintenance database, so this session is not among them."""
    with psycopg.connect(server, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return sum(1 for (killed,) in rows if killed)


def _allow_connections(server: str, database: str, allowed: bool) -> None:
    # ALLOW_CONNECTIONS binds superusers too (CONNECTION LIMIT and REVOKE CONNECT do not): the router's DSN
    # is the test server's superuser
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS {'true' if allowed else 'false'}")


def _names_the_database(reason: str, database: str) -> bool:
    return f"cannot connect to the spool database postgresql://postgres@127.0.0.1:5432/{database}" in reason and (
        "not currently accepting connections" in reason
    )


def _config(tmp_path: Path, port: int, admin: int, crm_url: str) -> Path:
    config = tmp_path / "router.toml"
    config.write_text(postgresql_router(port, crm_url, lease=LEASE, max_backoff="500ms", admin=admin))
    return config


@pytest.mark.slow
def test_postgresql_away_mid_stream_loses_nothing_acknowledged(tmp_path: Path, pg_dsn: str, pg_server: str) -> None:
    database = urllib.parse.urlsplit(pg_dsn).path.lstrip("/")
    port, admin = free_port(), free_port()
    env = {"ROUTER_WEBHOOK_API_KEY": KEY, "ROUTER_PG_DSN": pg_dsn}
    with http_receiver() as crm:
        config = _config(tmp_path, port, admin, crm.url)
        with RouterProcess(config, env=env) as router:
            assert router.proc is not None
            pid = router.proc.pid
            #: per webhook sent: (time sent, status, the event's id when acknowledged)
            answers: list[tuple[float, int, str | None]] = []
            #: /readyz every 50 ms: (time, status, body)
            readiness: list[tuple[float, int, dict[str, Any]]] = []
            stop = threading.Event()

            def send() -> None:
                event = example("transport.messageReceived")
                while not stop.is_set():
                    sent = time.monotonic()
                    try:
                        status, body, _ = post(f"http://127.0.0.1:{port}/events", event, {"x-api-key": KEY})
                    except OSError:  # no answer at all: neither acknowledged nor refused
                        status, body = 0, {}
                    answers.append((sent, status, body.get("id") if 200 <= status < 300 else None))
                    time.sleep(0.005)

            def watch() -> None:
                while not stop.is_set():
                    at = time.monotonic()
                    try:
                        status, body = readyz(admin)
                    except OSError:
                        status, body = 0, {}
                    readiness.append((at, status, body))
                    time.sleep(0.05)

            threads = [threading.Thread(target=send), threading.Thread(target=send), threading.Thread(target=watch)]
            for thread in threads:
                thread.start()
            try:
                wait_for(lambda: len(crm.requests) >= 50, what="events flowing to the receiver")
                # the connections killed a few times over two seconds, the server up: the router connects again
                killed = 0
                for _ in range(4):
                    killed += _kill_sessions(pg_server, database)
                    time.sleep(0.5)
                assert killed >= 4, "the router's sessions were there to kill"
                # then the database refuses every connection, as while the server restarts
                before = len(answers)
                _allow_connections(pg_server, database, False)
                try:
                    _kill_sessions(pg_server, database)
                    outage_from = time.monotonic()
                    time.sleep(OUTAGE)
                finally:
                    _allow_connections(pg_server, database, True)
                outage_to = time.monotonic()
                assert len(answers) > before, "webhooks were sent during the outage"
                at_end = len(crm.requests)
                wait_for(lambda: len(crm.requests) > at_end + 50, timeout=30, what="delivery resumed by itself")
                time.sleep(0.5)
            finally:
                stop.set()
                for thread in threads:
                    thread.join()

            acknowledged = {event_id for _, _, event_id in answers if event_id is not None}

            def delivered() -> set[str]:
                with crm.lock:
                    return {r.json()["id"] for r in crm.requests}

            wait_for(
                lambda: acknowledged <= delivered(), timeout=30, what="every acknowledged event delivered at least once"
            )
            # what was not acknowledged was refused, as a webhook the router cannot store is: 503, never an answer
            # that says it was taken, nor none at all
            refused = [(at, status) for at, status, event_id in answers if event_id is None]
            assert {status for _, status in refused} <= {503}, sorted({s for _, s in refused})
            assert refused, "the outage refused webhooks (503): nothing could be stored"
            assert all(outage_from - 1.0 <= at <= outage_to + 1.0 for at, _ in refused), (
                "webhooks were refused outside the outage: killed connections alone must cost no refusal",
                [round(at - outage_from, 2) for at, _ in refused],
            )
            # /readyz said so while the database refused connections, naming the spool and why
            down = [body for at, status, body in readiness if status == 503 and outage_from <= at <= outage_to + 1.0]
            assert down, "/readyz answered 503 during the outage"
            reasons = {str(body.get("spool", {}).get("error")) for body in down}
            assert all(body["spool"]["writable"] is False for body in down), down[:3]
            assert any(_names_the_database(r, database) for r in reasons), reasons
            wait_for(lambda: readyz(admin)[0] == 200, timeout=10, what="/readyz ready again")
            # resumed by itself: the same process, and its output never had to be restarted
            assert router.proc.poll() is None and router.proc.pid == pid
            restarts = [r for r in router.log_records() if str(r.get("msg", "")).endswith("failed; restarting it")]
            assert not restarts, restarts[:2]

            def pending() -> int:
                count: int = status_json(config, {"ROUTER_PG_DSN": pg_dsn})["pending_events"]
                return count

            wait_for(lambda: pending() == 0, timeout=20, what="nothing pending in the spool")
            assert router.terminate() == 0


@pytest.mark.slow
def test_readiness_follows_the_database_without_traffic(tmp_path: Path, pg_dsn: str, pg_server: str) -> None:
    """A load balancer stops sending to a router whose /readyz answers 503: the router must find out by itself
    that the database is away, and back, with no webhook coming to try a store."""
    database = urllib.parse.urlsplit(pg_dsn).path.lstrip("/")
    port, admin = free_port(), free_port()
    with http_receiver() as crm:
        config = _config(tmp_path, port, admin, crm.url)
        with RouterProcess(config, env={"ROUTER_WEBHOOK_API_KEY": KEY, "ROUTER_PG_DSN": pg_dsn}) as router:
            assert readyz(admin)[0] == 200
            _allow_connections(pg_server, database, False)
            try:
                _kill_sessions(pg_server, database)
                status, body = wait_for(
                    lambda: (answer := readyz(admin))[0] == 503 and answer,
                    timeout=5,
                    what="/readyz 503 while the database refuses connections",
                )
                assert body["spool"]["writable"] is False
                assert _names_the_database(str(body["spool"]["error"]), database), body
            finally:
                _allow_connections(pg_server, database, True)
            wait_for(lambda: readyz(admin)[0] == 200, timeout=5, what="/readyz 200 again, no webhook sent")
            assert not crm.requests
            status, body, _ = post(
                f"http://127.0.0.1:{port}/events", example("transport.messageReceived"), {"x-api-key": KEY}
            )
            assert status == 202, body
            wait_for(lambda: [r.json()["id"] for r in crm.requests] == [body["id"]], what="the webhook delivered")
            assert router.terminate() == 0


def _event(n: int) -> StoreEvent:
    return StoreEvent(f"e{n}", "transport.messageReceived", b"{}", [NewDelivery("out", "all", None)])


def _stored(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [str(i) for (i,) in conn.execute("SELECT id FROM event_router.events ORDER BY seq").fetchall()]


@pytest.mark.anyio
async def test_a_session_ended_while_idle_or_in_its_commit_costs_no_write(pg_dsn: str, pg_server: str) -> None:
    """The writer's and the reader's sessions killed while idle: the next store and read run on new connections,
    nothing refused. A session ended during its commit (a deferred trigger ends its own backend, before the
    commit record): the store asks what became of its transaction, finds it aborted, and runs again; stored
    once."""
    database = urllib.parse.urlsplit(pg_dsn).path.lstrip("/")
    spool = PostgreSQLSpool(pg_dsn)
    spool.open("exclusive")
    try:
        assert len(await spool.store([_event(1)])) == 1
        assert _kill_sessions(pg_server, database) == 2, "the writer's and the reader's"
        await anyio.sleep(0.1)
        assert spool.fetch_due("out", spool.clock.now() + 1, 10, ()) != []
        assert await spool.store([_event(2)]) and spool.writable
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                """
CREATE SEQUENCE event_router.kill_once;
CREATE FUNCTION event_router.kill_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- once: a sequence is not rolled back with the transaction the kill ends
    IF nextval('event_router.kill_once') = 1 THEN
        PERFORM pg_terminate_backend(pg_backend_pid());
        PERFORM pg_sleep(1);
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER kill_at_commit AFTER INSERT ON event_router.events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION event_router.kill_at_commit();
"""
            )
        assert await spool.store([_event(3)]) and spool.writable
        assert _stored(pg_dsn) == ["e1", "e2", "e3"], "the store whose commit was cut short ran again, once"
        with psycopg.connect(pg_dsn) as conn:
            fired = conn.execute("SELECT last_value FROM event_router.kill_once").fetchone()
        assert fired == (2,), "the trigger ended the first commit and let the second through"
    finally:
        spool.close()


def test_connections_notice_a_server_gone_without_a_word(pg_dsn: str) -> None:
    """The spool's connections carry TCP keepalives and a user timeout (a host gone or a network cut is
    noticed in seconds, not when the kernel gives up), unless the DSN sets its own; the socket of the real
    connection has them."""
    import socket

    spool = PostgreSQLSpool(pg_dsn)
    try:
        spool.open("exclusive")
        conn = spool._connect()
        try:
            given = conn.info.get_parameters()
            assert (given["keepalives_idle"], given["tcp_user_timeout"]) == ("5", "15000"), given
            sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
            try:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 5
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 15000
            finally:
                sock.close()
        finally:
            conn.close()
    finally:
        spool.close()
    own = PostgreSQLSpool(pg_dsn + "?keepalives_idle=30")
    try:
        own.open("exclusive")
        conn = own._connect()
        try:
            assert conn.info.get_parameters()["keepalives_idle"] == "30"
        finally:
            conn.close()
    finally:
        own.close()
