"""An output a reload removes while its deliveries are pending, on both spool backends: they are neither lost
nor held by the router. They stay pending for that output (`status` shows them), and on PostgreSQL the leases
the router held on them (in flight, or read from the spool and waiting in memory) are given back at once
instead of being renewed for as long as it runs; a reload that brings the output back delivers them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import psycopg
import pytest

from event_router.testing import (
    Recorded,
    RouterProcess,
    archive_all,
    example,
    free_port,
    http_receiver,
    post,
    router_table,
    run_cli,
    wait_for,
    webhook_input,
)

KEY = "removed-output-key"
EVENTS = 12
#: PostgreSQL: renewed every 2 s; long enough that a lease given back is told from one that ran out
LEASE = 6.0

pytestmark = pytest.mark.slow


def _config(spool: str, port: int, admin: int, crm_url: str | None) -> str:
    with_lease = spool.removesuffix(" }") + f', lease = "{LEASE:g}s" }}' if spool else ""
    text = (
        router_table(admin, shutdown_timeout="1s", extra=with_lease)
        + webhook_input(port)
        + archive_all("./var/archive.jsonl")
    )
    if crm_url is not None:
        text += f"""
[outputs.crm]
type = "http"
url = "{crm_url}/hooks"
concurrency = 2
timeout = "60s"
retry = {{ initial_backoff = "50ms", max_backoff = "200ms", max_attempts = 100000 }}
[[routes]]
name = "to crm"
to = "crm"
"""
    return text


def _status(config: Path, env: dict[str, str]) -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, "-m", "event_router", "status", "--json", "-c", str(config)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    shown: dict[str, Any] = json.loads(run.stdout)
    return shown


def _leased(dsn: str) -> int:
    """The crm's deliveries some router holds a lease on (as committed)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM event_router.deliveries WHERE output = 'crm' AND lease_owner IS NOT NULL"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_the_deliveries_of_a_removed_output_stay_pending_and_are_not_held(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    spool, spool_env = router_spool
    dsn = spool_env.get("ROUTER_PG_DSN")
    port, admin = free_port(), free_port()
    env = {**spool_env, "ROUTER_WEBHOOK_API_KEY": KEY}
    #: how the crm answers: "fail" (503), "hold" (no answer until the test ends), "ok" (200)
    mode = ["fail"]
    done = threading.Event()

    def handle(_: Recorded, handler: BaseHTTPRequestHandler) -> None:
        if mode[0] == "hold":
            done.wait(60)
        status = 503 if mode[0] == "fail" else 200
        with contextlib.suppress(OSError):  # a held request's client is gone by now
            handler.send_response(status)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

    with http_receiver(handle) as crm, contextlib.ExitStack() as ending:
        ending.callback(done.set)
        config = tmp_path / "router.toml"
        config.write_text(_config(spool, port, admin, crm.url))
        with RouterProcess(config, env=env) as router:
            ids = []
            for _ in range(EVENTS):
                status, body, _ = post(
                    f"http://127.0.0.1:{port}/events", example("transport.messageReceived"), {"x-api-key": KEY}
                )
                assert status == 202, body
                ids.append(body["id"])

            def tried() -> set[str]:
                with crm.lock:
                    return {r.json()["id"] for r in crm.requests}

            # every delivery failed once: from now on each attempt is one read back from the spool (on
            # PostgreSQL, leased to this router), and the receiver holds every request it gets
            wait_for(lambda: tried() == set(ids), what="every delivery tried once")
            with crm.lock:
                mode[0] = "hold"
                holding_from = len(crm.requests)
            wait_for(lambda: len(crm.requests) >= holding_from + 2, what="two attempts held by the receiver")
            if dsn is not None:
                assert _leased(dsn) >= 2, "the attempts in flight are leased to the router"

            config.write_text(_config(spool, port, admin, None))
            reloaded = run_cli("reload", "-c", str(config), env=env)
            assert reloaded.returncode == 0, reloaded.stderr
            removed_at = time.monotonic()
            router.wait_log("configuration reloaded")

            # neither lost nor delivered elsewhere: pending for the output that is gone, every one of them
            shown = _status(config, env)
            assert shown["pending_events"] == EVENTS, shown
            assert shown["outputs"]["crm"]["pending"] == EVENTS, shown
            if dsn is not None:
                # given back, not left to run out: well within one lease of the reload
                wait_for(lambda: _leased(dsn) == 0, timeout=LEASE / 2, what="the crm's leases given back")
                assert time.monotonic() - removed_at < LEASE
                # and nothing renews them: past more than a lease and a renewal, none is leased again
                time.sleep(LEASE / 3 + 1.0)
                assert _leased(dsn) == 0, "the router took the removed output's deliveries again"
            else:
                time.sleep(1.0)
            assert _status(config, env)["outputs"]["crm"]["pending"] == EVENTS

            # the output back: its deliveries go out, each event at least once
            with crm.lock:
                mode[0] = "ok"
                back_from = len(crm.requests)
            config.write_text(_config(spool, port, admin, crm.url))
            assert run_cli("reload", "-c", str(config), env=env).returncode == 0

            def delivered() -> set[str]:
                with crm.lock:
                    return {r.json()["id"] for r in crm.requests[back_from:]}

            wait_for(lambda: delivered() == set(ids), timeout=30, what="every event delivered once the crm is back")
            wait_for(lambda: _status(config, env)["pending_events"] == 0, what="nothing pending")
            assert router.terminate() == 0
