"""Running as a service: sd_notify, watchdog, reload while events flow, admin endpoint, the systemd unit."""

from __future__ import annotations

import functools
import shutil
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import anyio
import pytest

from event_router.inputs.webhook import BACKLOG
from event_router.testing import (
    IN_CI,
    ROOT,
    MakeApp,
    RouterProcess,
    example,
    free_port,
    http_receiver,
    post,
    read_jsonl,
    router_table,
    run_cli,
    wait_for,
    webhook_input,
)

ENV = {"ROUTER_WEBHOOK_API_KEY": "svc-key"}
HEADERS = {"x-api-key": "svc-key"}


def config_text(port: int, admin: int, crm_url: str, *, extra: str = "") -> str:
    return f"""
[router]
data_dir = "./var"
shutdown_timeout = "5s"
[router.admin]
listen = "127.0.0.1:{admin}"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
api_key = {{ env = "ROUTER_WEBHOOK_API_KEY" }}
[outputs.archive]
type = "file"
path = "./var/archive.jsonl"
[outputs.crm]
type = "http"
url = "{crm_url}/in"
retry = {{ initial_backoff = "50ms", max_backoff = "200ms" }}
[[routes]]
name = "archive"
to = ["archive"]
[[routes]]
name = "mail to crm"
match = {{ trigger = ["transport.messageReceived"] }}
to = ["crm"]
{extra}
"""


@pytest.mark.slow
def test_notify_sequence_watchdog_and_status(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    config = tmp_path / "router.toml"
    config.write_text(config_text(port, admin, "http://127.0.0.1:9"))
    with RouterProcess(config, env={**ENV, "WATCHDOG_USEC": "200000"}) as router:
        time.sleep(1.0)
        router.poll_messages()
        router.terminate()
    messages = router.messages
    assert messages[0] == "READY=1"
    assert messages.count("WATCHDOG=1") >= 4, messages  # every 0.1 s from the event loop
    assert any(m.startswith("STATUS=") and "events pending" in m for m in messages)
    ready, stopping = messages.index("READY=1"), messages.index("STOPPING=1")
    assert ready < stopping
    assert messages[-1] == "STATUS=draining deliveries" or "STOPPING=1" in messages[-3:]


def test_a_notify_socket_nobody_reads_does_not_freeze_the_router(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    config = tmp_path / "router.toml"
    config.write_text(config_text(port, admin, "http://127.0.0.1:9"))
    # a watchdog ping every 10 ms fills the socket's queue in well under a second once nobody reads it
    with RouterProcess(config, env={**ENV, "WATCHDOG_USEC": "20000"}) as router:
        time.sleep(1.5)
        status, body, _ = post(f"http://127.0.0.1:{port}/events", example("transport.messageReceived"), HEADERS)
        assert status == 202, body
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=5) as response:
            assert response.status == 200
        router.poll_messages()
        assert "WATCHDOG=1" in router.messages
        assert router.terminate() == 0


@pytest.mark.slow
def test_reload_while_events_flow(tmp_path: Path) -> None:
    """A valid reload (admin API) and an invalid one (SIGHUP) while events flow: none lost, none doubled."""
    port, admin = free_port(), free_port()
    config = tmp_path / "router.toml"
    with http_receiver() as first, http_receiver() as second:
        config.write_text(config_text(port, admin, first.url))
        with RouterProcess(config, env=ENV) as router:
            accepted: list[str] = []
            stop = threading.Event()

            def sender() -> None:
                i = 0
                while not stop.is_set() and i < 2000:
                    status, body, _ = post(
                        f"http://127.0.0.1:{port}/events", example("transport.messageReceived"), HEADERS
                    )
                    assert status == 202, body
                    accepted.append(body["id"])
                    i += 1
                    time.sleep(0.002)

            thread = threading.Thread(target=sender)
            thread.start()
            try:
                wait_for(lambda: len(accepted) > 100, what="events flowing")
                # valid: the CRM moves to another receiver and a second archive appears
                config.write_text(
                    config_text(port, admin, second.url)
                    + '[outputs.extra]\ntype = "file"\npath = "./var/extra.jsonl"\n'
                    + '[[routes]]\nname = "extra"\nto = ["extra"]\n'
                )
                result = run_cli("reload", "-c", str(config), env=ENV)
                assert result.returncode == 0, result.stderr
                assert result.stdout.strip() == "reloaded"
                at_reload = len(accepted)
                wait_for(lambda: len(accepted) > at_reload + 100, what="events after the reload")
                # invalid: refused, the running configuration stays
                config.write_text(config_text(port, admin, second.url).replace('type = "file"', 'type = "fiel"'))
                assert router.proc is not None
                refused = run_cli("reload", "--pid", str(router.proc.pid))
                assert refused.returncode == 0
                wait_for(
                    lambda: any(r.get("msg", "").startswith("reload refused") for r in router.log_records()),
                    what="the refusal in the log",
                )
                refused_cli = run_cli("reload", "-c", str(tmp_path / "router.toml"), env=ENV)
                assert refused_cli.returncode == 1  # the file itself is invalid: the CLI says so too
                after_invalid = len(accepted)
                wait_for(lambda: len(accepted) > after_invalid + 50, what="events after the refused reload")
            finally:
                stop.set()
                thread.join()
            wait_for(
                lambda: len(first.requests) + len(second.requests) >= len(accepted),
                timeout=30,
                what="every event at one of the receivers",
            )
            wait_for(lambda: len(read_jsonl(tmp_path / "var/archive.jsonl")) >= len(accepted), what="archive complete")
            router.poll_messages()
            router.terminate()
    delivered = Counter(r.headers["Idempotency-Key"] for r in first.requests + second.requests)
    assert set(delivered) == set(accepted), "lost across the reload"
    assert max(delivered.values()) == 1, "duplicated across the reload"
    archived = Counter(line["id"] for line in read_jsonl(tmp_path / "var/archive.jsonl"))
    assert set(archived) == set(accepted) and max(archived.values()) == 1
    assert len(second.requests) > 0 and len(first.requests) > 0
    extra = {line["id"] for line in read_jsonl(tmp_path / "var/extra.jsonl")}
    assert extra and extra <= set(accepted)
    assert set(accepted[after_invalid:]) <= extra, "the refused reload must keep the valid config running"
    assert "RELOADING=1" in router.messages
    reloading = router.messages.index("RELOADING=1")
    assert "READY=1" in router.messages[reloading:]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.anyio
async def test_admin_health_ready_and_metrics(make_app: MakeApp, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    with http_receiver() as rx:
        text = config_text(port, admin, rx.url).replace('api_key = { env = "ROUTER_WEBHOOK_API_KEY" }', "")
        async with make_app(text) as app:
            base = f"http://127.0.0.1:{app.admin_port}"
            assert (await anyio.to_thread.run_sync(_get, base + "/healthz"))[0] == 200
            status, body = await anyio.to_thread.run_sync(_get, base + "/readyz")
            assert status == 200 and '"ready":true' in body
            _, before = await anyio.to_thread.run_sync(_get, base + "/metrics")
            assert metric(before, "event_router_events_received_total") == 0
            for trigger in ("transport.messageReceived", "transport.relationshipChanged"):
                status, _, _ = await anyio.to_thread.run_sync(
                    functools.partial(post, f"http://127.0.0.1:{port}/events", example(trigger))
                )
                assert status == 202
            rel = example("transport.relationshipChanged")
            rel["trigger"] = "consumption.relationshipEvent.REL1YBBHLUEC51CGTOYD"
            assert (await anyio.to_thread.run_sync(lambda: post(f"http://127.0.0.1:{port}/events", rel)))[0] == 202
            await anyio.to_thread.run_sync(
                lambda: wait_for(lambda: rx.requests and app.spool.depth == 0, what="delivered")
            )
            _, after = await anyio.to_thread.run_sync(_get, base + "/metrics")
    assert (
        metric(after, "event_router_events_received_total", input="connector", trigger="transport.messageReceived") == 1
    )
    # per-relationship triggers are labelled by their schema, so the series stay bounded
    assert metric(after, "event_router_events_received_total", trigger="consumption.relationshipEvent.*") == 1
    assert "REL1YBBHLUEC51CGTOYD" not in after
    assert metric(after, "event_router_deliveries_total", output="crm", outcome="delivered") == 1
    assert metric(after, "event_router_deliveries_total", output="archive", outcome="delivered") == 3
    assert metric(after, "event_router_events_routed_total", route="archive") == 3
    assert metric(after, "event_router_delivery_latency_seconds_count", output="crm") == 1
    assert metric(after, "event_router_spool_pending_events") == 0
    assert metric(after, "event_router_input_ready", input="connector") == 1


def test_reload_cli_needs_admin_or_pid(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text('[inputs.a]\ntype = "webhook"\nlisten = "127.0.0.1:1"\n')
    result = run_cli("reload", "-c", str(config))
    assert result.returncode == 1
    assert "[router.admin] is not configured; use --pid PID" in result.stderr


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        message = "systemd-analyze is not installed (apt-get install systemd)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    unit = (ROOT / "packaging" / "event-router.service").read_text()
    for key in (
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=event-router",
        "ProtectSystem=strict",
        "LoadCredential=",
        "After=network-online.target time-sync.target event-router.socket",
        "Requires=event-router.socket",
        "Also=event-router.socket",
    ):
        assert key in unit
    socket_unit = (ROOT / "packaging" / "event-router.socket").read_text()
    # the webhook of the router.toml `init` writes, so that the two fit as shipped
    for key in ("ListenStream=127.0.0.1:8787", "FileDescriptorName=connector", f"Backlog={BACKLOG}"):
        assert key in socket_unit
    # verify checks that ExecStart exists: point it at this checkout's installed command
    installed = Path(shutil.which("event-router") or ROOT / ".venv/bin/event-router")
    local = tmp_path / "event-router.service"
    local.write_text(unit.replace("/opt/event-router/bin/event-router", str(installed)))
    (tmp_path / "event-router.socket").write_text(socket_unit)
    result = subprocess.run(
        [analyze, "verify", str(local), str(tmp_path / "event-router.socket")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.slow
def test_a_reload_that_changes_an_output_sends_its_in_flight_deliveries_once(tmp_path: Path) -> None:
    """16 deliveries in flight to a slow receiver (4 s each, longer than shutdown_timeout, which bounds a stop,
    not a reload); a reload changes that output: each event reaches the receiver once."""
    port, admin = free_port(), free_port()
    config = tmp_path / "router.toml"
    with http_receiver() as crm:
        crm.delay = 4.0

        def text(timeout: str) -> str:
            return f"""
{router_table(admin, shutdown_timeout="1s")}{webhook_input(port)}[outputs.crm]
type = "http"
url = "{crm.url}/in"
concurrency = 16
timeout = "{timeout}"
retry = {{ initial_backoff = "50ms", max_backoff = "200ms" }}
[[routes]]
name = "mail to crm"
to = ["crm"]
"""

        config.write_text(text("30s"))
        with RouterProcess(config, env=ENV) as router:
            ids = []
            for _ in range(16):
                status, body, _ = post(f"http://127.0.0.1:{port}/events", example("transport.messageReceived"), HEADERS)
                assert status == 202, body
                ids.append(body["id"])
            wait_for(lambda: _in_flight(admin) == 16, timeout=5, interval=0.01, what="16 deliveries in flight")
            config.write_text(text("20s"))
            router.reload()
            reloaded = router.wait_log("configuration reloaded")
            assert reloaded["restarted"] == ["outputs.crm"]
            assert not crm.requests, "the reload came after the receiver answered: nothing was in flight"
            wait_for(lambda: len(crm.requests) >= 16, timeout=15, what="16 requests")
            time.sleep(crm.delay + 1.0)  # a second attempt of any of them would have arrived by now
            assert router.terminate() == 0
        with crm.lock:
            sent = Counter(r.json()["id"] for r in crm.requests)
    assert sorted(sent) == sorted(ids)
    assert set(sent.values()) == {1}, sent


def _in_flight(admin: int) -> int:
    """The admin endpoint's `deliveries_in_flight` of output crm."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('event_router_deliveries_in_flight{output="crm"}'):
                return int(float(line.split()[-1]))
    return 0
