"""A real router process on the PostgreSQL spool, end to end: webhooks acknowledged once PostgreSQL has them,
delivered to a file and an HTTP receiver, and the operator commands (`status`, `dlq list|replay`) run
as separate processes on the same database, with the connection string as the only secret they have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from event_router.testing import (
    RouterProcess,
    example,
    free_port,
    http_receiver,
    post,
    read_jsonl,
    router_table,
    wait_for,
    webhook_input,
)
from router_helpers import POSTGRESQL_SPOOL, http_output, route

KEY = "pg-router-key"
PASSWORD = "pg-router-password"

pytestmark = pytest.mark.slow


def operator(*args: str, dsn: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`event-router ARGS` in a shell that has the spool's connection string and none of the service's
    other secrets."""
    env = {k: v for k, v in os.environ.items() if k not in ("ROUTER_WEBHOOK_API_KEY", "EVENT_ROUTER_CONFIG")}
    return subprocess.run(
        [sys.executable, "-m", "event_router", *args],
        cwd=cwd,
        env={**env, "ROUTER_PG_DSN": dsn},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_router_on_postgresql_stores_delivers_and_shows_its_spool(tmp_path: Path, pg_dsn: str) -> None:
    port = free_port()
    # trust authentication ignores the password: it is there so the test sees that nothing prints it
    dsn = pg_dsn.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")
    with http_receiver() as crm:
        crm.respond(503)
        config = tmp_path / "router.toml"
        config.write_text(
            router_table(shutdown_timeout="2s")
            + webhook_input(port)
            + POSTGRESQL_SPOOL.format(lease="5s")
            + '[outputs.archive]\ntype = "file"\npath = "./var/archive.jsonl"\n'
            + http_output(
                "crm",
                f"{crm.url}/hooks",
                'retry = { initial_backoff = "50ms", max_backoff = "200ms", max_attempts = 100000 }',
            )
            + route('["archive", "crm"]')
        )
        c = ("-c", str(config))
        env = {"ROUTER_WEBHOOK_API_KEY": KEY, "ROUTER_PG_DSN": dsn}
        with RouterProcess(config, env=env) as router:
            ids = []
            for _ in range(20):
                event = example("transport.messageReceived")
                status, body, _ = post(f"http://127.0.0.1:{port}/events", event, {"x-api-key": KEY})
                assert status == 202, body
                ids.append(body["id"])
            archive = tmp_path / "var" / "archive.jsonl"
            wait_for(lambda: archive.exists() and len(read_jsonl(archive)) == 20, what="20 events archived")
            assert sorted(line["id"] for line in read_jsonl(archive)) == sorted(ids)
            wait_for(lambda: len(crm.requests) >= 20, what="the crm tried")

            # the events are in PostgreSQL, not in a SQLite file in data_dir
            assert not (tmp_path / "var" / "spool.db").exists()

            def waiting() -> list[tuple[str, str]]:
                with psycopg.connect(pg_dsn) as conn:
                    return sorted(
                        conn.execute(
                            "SELECT e.id, d.output FROM event_router.deliveries d"
                            " JOIN event_router.events e USING (seq)"
                        ).fetchall()
                    )

            # an archived line's outcome is committed just after the file's fsync: wait for it
            expected = sorted((i, "crm") for i in ids)
            wait_for(lambda: waiting() == expected, what="only the crm's deliveries waiting in PostgreSQL")

            shown = operator("status", "--json", *c, dsn=dsn, cwd=tmp_path)
            assert shown.returncode == 0, shown.stderr
            status = json.loads(shown.stdout)
            assert status["spool"] == pg_dsn, "where the spool is, without the password"
            assert status["pending_events"] == 20
            assert status["outputs"]["crm"]["pending"] == 20 and status["outputs"]["crm"]["last_error"]
            assert status["outputs"]["archive"]["pending"] == 0

            # the crm refuses them for good: dead letters, listed and replayed from another process
            crm.respond(422)
            listed: list[dict[str, object]] = []

            def dead_letters() -> int:
                run = operator("dlq", "list", "--json", *c, dsn=dsn, cwd=tmp_path)
                assert run.returncode == 0, run.stderr
                listed[:] = json.loads(run.stdout)
                return len(listed)

            wait_for(lambda: dead_letters() == 20, what="20 dead letters", timeout=30)
            assert {d["output"] for d in listed} == {"crm"} and {d["reason"] for d in listed} == {"permanent"}
            assert sorted(str(d["event_id"]) for d in listed) == sorted(ids)

            crm.respond(200)
            before = len(crm.requests)
            replayed = operator("dlq", "replay", "--output", "crm", *c, dsn=dsn, cwd=tmp_path)
            assert replayed.returncode == 0, replayed.stderr
            wait_for(lambda: len(crm.requests) - before == 20, what="the replayed deliveries sent")
            delivered = {r.json()["id"] for r in crm.requests[before:]}
            assert delivered == set(ids)
            assert dead_letters() == 0, "a replayed dead letter is gone"

            def pending() -> int:
                run = operator("status", "--json", *c, dsn=dsn, cwd=tmp_path)
                assert run.returncode == 0, run.stderr
                count: int = json.loads(run.stdout)["pending_events"]
                return count

            wait_for(lambda: pending() == 0, what="nothing pending")
            router.terminate()
        for run in (shown, replayed):
            assert PASSWORD not in run.stdout + run.stderr
        assert PASSWORD not in router.log_path.read_text()


def test_status_without_the_connection_string_says_which_secret_it_needs(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(
        router_table()
        + webhook_input(free_port())
        + '[router.spool]\nbackend = "postgresql"\ndsn = { env = "ROUTER_PG_DSN" }\n'
        + '[outputs.archive]\ntype = "file"\npath = "./var/a.jsonl"\n[[routes]]\nname = "all"\nto = "archive"\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ROUTER_PG_DSN", "ROUTER_WEBHOOK_API_KEY")}
    run = subprocess.run(
        [sys.executable, "-m", "event_router", "status", "-c", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 1
    assert run.stderr.strip() == (
        "error: router.toml: router.spool.dsn: environment variable ROUTER_PG_DSN is not set (status, dlq, replay, "
        "output and check --connect read the spool's database: of the secrets, they need this one)"
    )
