"""Two router processes on one PostgreSQL spool (#18): webhooks spread over both, one SIGKILLed while the
target is down. Once the target is back, the survivor delivers every acknowledged event (the dead router's
too, once their leases ran out), each delivery of an event with one Idempotency-Key whichever router sent it."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from event_router.testing import RouterProcess, example, free_port, http_receiver, post, wait_for
from router_helpers import postgresql_router, status_json

KEY = "ha-key"
LEASE = 3.0
#: the survivor's poll of the spool (OutputWorker.poll_interval) and its longest backoff, beyond the lease
SLACK = 1.0 + 0.2 + 2.0

pytestmark = pytest.mark.slow


def config_for(tmp_path: Path, name: str, port: int, crm_url: str) -> Path:
    home = tmp_path / name
    home.mkdir()
    config = home / "router.toml"
    config.write_text(postgresql_router(port, crm_url, lease=f"{LEASE:g}s", max_backoff="200ms"))
    return config


def test_a_router_killed_mid_stream_leaves_nothing_undelivered(tmp_path: Path, pg_dsn: str) -> None:
    env = {"ROUTER_WEBHOOK_API_KEY": KEY, "ROUTER_PG_DSN": pg_dsn}
    ports = free_port(), free_port()
    with http_receiver() as crm:
        crm.respond(503)
        configs = [config_for(tmp_path, name, port, crm.url) for name, port in zip("ab", ports, strict=True)]
        with RouterProcess(configs[0], env=env) as a, RouterProcess(configs[1], env=env) as b:
            acknowledged: dict[str, int] = {}
            event = example("transport.messageReceived")
            for n in range(80):  # alternately to each router, as a load balancer would spread them
                which = n % 2
                status, body, _ = post(f"http://127.0.0.1:{ports[which]}/events", event, {"x-api-key": KEY})
                assert status == 202, body
                acknowledged[body["id"]] = which

            def tried() -> set[str]:
                return {r.json()["id"] for r in crm.requests}

            wait_for(lambda: len(tried()) == 80, timeout=30, what="every event tried at the target (down)")
            a.kill()  # SIGKILL: its leases are neither given back nor renewed
            killed_at = time.monotonic()
            with crm.lock:  # the requests recorded from here on are answered 200, those before 503
                crm.script = [(200, {})]
                switch = len(crm.requests)
            wait_for(
                lambda: {r.json()["id"] for r in crm.requests[switch:]} >= set(acknowledged),
                timeout=LEASE + SLACK + 10,
                what="every acknowledged event delivered after the target came back",
            )
            took = time.monotonic() - killed_at
            assert b.proc is not None and b.proc.poll() is None, "the survivor still runs"
            # delivered at least once, within one lease (plus the survivor's poll and backoff) of the kill
            assert took <= LEASE + SLACK, f"the last event was delivered {took:.1f}s after the kill"
            # one key per delivery of an event: the survivor sends a dead router's with the same one
            keys: dict[str, set[str]] = defaultdict(set)
            for r in crm.requests:
                keys[r.json()["id"]].update(v for k, v in r.headers.items() if k.lower() == "idempotency-key")
            assert set(keys) == set(acknowledged)
            assert all(len(k) == 1 for k in keys.values()), {i: k for i, k in keys.items() if len(k) != 1}
            # duplicates after the target came back: only what was in flight at the switch (the target was
            # down when the router died, so none of its attempts succeeded)
            after = Counter(r.json()["id"] for r in crm.requests[switch:])
            repeated = sum(count - 1 for count in after.values())
            assert repeated <= 2 * 4, f"{repeated} repeats: more than both routers' concurrency"
            both = Counter(acknowledged.values())
            assert both == {0: 40, 1: 40}

            def pending() -> int:
                count: int = status_json(configs[1], {"ROUTER_PG_DSN": pg_dsn})["pending_events"]
                return count

            wait_for(lambda: pending() == 0, timeout=10, what="nothing pending in the cluster")


def test_what_one_router_stored_and_holds_is_not_sent_by_another(tmp_path: Path, pg_dsn: str) -> None:
    """Router a takes a stream of webhooks for a slow target (one request at a time) and keeps their deliveries
    in memory, as it does every delivery it just stored; router b, idle, reads the spool for due deliveries
    every second. b must not take what a holds: each event reaches the target once."""
    env = {"ROUTER_WEBHOOK_API_KEY": KEY, "ROUTER_PG_DSN": pg_dsn}
    ports = free_port(), free_port()
    with http_receiver() as crm:
        crm.delay = 0.1  # ten a second, a fifth of what comes in: a backlog forms in a's memory
        configs = [config_for(tmp_path, name, port, crm.url) for name, port in zip("ab", ports, strict=True)]
        for config in configs:
            config.write_text(config.read_text().replace("concurrency = 4", "concurrency = 1"))
        with RouterProcess(configs[0], env=env), RouterProcess(configs[1], env=env):
            acknowledged = []
            event = example("transport.messageReceived")
            for _ in range(60):  # over about 1.2 s: some stored between any two of b's reads
                status, body, _ = post(f"http://127.0.0.1:{ports[0]}/events", event, {"x-api-key": KEY})
                assert status == 202, body
                acknowledged.append(body["id"])
                time.sleep(0.02)
            wait_for(
                lambda: {r.json()["id"] for r in crm.requests} >= set(acknowledged),
                timeout=30,
                what="every event delivered",
            )
            time.sleep(1.5)  # b's next reads of the spool, had it taken any
            sent = Counter(r.json()["id"] for r in crm.requests)
            assert set(sent) == set(acknowledged)
            assert max(sent.values()) == 1, f"{sum(n > 1 for n in sent.values())} events sent twice"
